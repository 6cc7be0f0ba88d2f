"""Health probes: /health/live, /health/ready and /health/startup."""

from .checks import HealthCheckError, add_check
from .routes import health_bp

__all__ = ["HealthCheckError", "add_check", "health_bp"]
