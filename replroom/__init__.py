"""replroom: collaborative multi-language REPL rooms, one isolated sandbox per room."""

__version__ = "0.1.0"
