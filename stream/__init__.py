"""ddsync: keeps DotDigital address books in step with audience and journey membership."""

__version__ = "0.1.0"
