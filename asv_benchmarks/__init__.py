"""airspeed velocity (asv) benchmarks of banded_mnn; configuration in ../asv.conf.json."""
