"""Models: the generator (pretrained or trained small), classifiers, the oracle."""
