"""mlops-provision: a production-grade MLflow tracking server on your own Linux VMs."""

__version__ = "0.1.0"
