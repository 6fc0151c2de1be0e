from django.apps import AppConfig


class InvocationsConfig(AppConfig):
    name = "invocations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connects the logout signal that closes a session's sockets.
        from invocations.live import auth  # noqa: F401
