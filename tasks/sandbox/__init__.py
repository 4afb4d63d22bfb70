"""Local contract servers for every platform (tests and the sandbox demo); see server.py."""
