"""The only layer that imports MPyC: the runtime (every private-MPyC touch, version-checked), the typed wire codec and vectorised speed-ups."""
