"""The HTTP API: ``create_app()`` builds it; routes live in ``service.api.routes``."""
