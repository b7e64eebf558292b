"""MAGNeT small (300M), 30 s music: facebook/magnet-small-30secs (magnet_32khz.yaml)."""
from _base import music


def get_config():
    return music("magnet_small_30s", "small", segment_duration=30.0)
