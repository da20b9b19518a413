"""Names that generated strategies import, served by the libraries the sandbox actually has."""
