"""MAGNeT medium (1.5B), 10 s music: facebook/magnet-medium-10secs (magnet_32khz.yaml)."""
from _base import music


def get_config():
    return music("magnet_medium_10s", "medium", segment_duration=10.0)
