"""ctiir: composed text-image retrieval with progressive learning (Zhao, Song, Jin, SIGIR 2022)."""

__version__ = "0.1.0"
