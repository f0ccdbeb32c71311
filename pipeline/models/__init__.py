"""Face-analysis models (landmarks, emotion, identity, detection, attributes, 3DMM) behind small
interfaces, and the registry of every weight file, generators' included."""
