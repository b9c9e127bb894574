"""fastsider: fine facial geometry from a single photo (a fast SIDER)."""

__version__ = "0.1.0"
