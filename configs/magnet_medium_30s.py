"""MAGNeT medium (1.5B), 30 s music: facebook/magnet-medium-30secs (magnet_32khz.yaml)."""
from _base import music


def get_config():
    return music("magnet_medium_30s", "medium", segment_duration=30.0)
