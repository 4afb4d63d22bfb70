"""Destinations: small classes behind one protocol, registered by kind and chosen in destinations.yaml."""
