"""Local stand-ins for the outside services Paylink talks to."""
