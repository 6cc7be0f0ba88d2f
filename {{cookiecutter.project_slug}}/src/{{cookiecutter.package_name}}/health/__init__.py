"""Health probes: /health/live, /health/ready and /health/startup."""

from .checks import add_check
from .routes import health_bp

__all__ = ["add_check", "health_bp"]
