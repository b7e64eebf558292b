"""MAGNeT small (300M), 10 s music: facebook/magnet-small-10secs (magnet_32khz.yaml)."""
from _base import music


def get_config():
    return music("magnet_small_10s", "small", segment_duration=10.0)
