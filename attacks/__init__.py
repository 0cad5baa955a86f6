"""Input-space attacks (through foolbox and torchattacks) and parameter-space attacks."""
