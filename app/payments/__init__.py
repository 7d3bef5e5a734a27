"""Payment gateways behind one interface: the sandbox for development and tests, a real
gateway adapter in production. Card numbers and security codes go to the gateway and
nowhere else: Paylink keeps the gateway's token, the brand, the last 4 and the expiry."""


def build_gateway(config):
    """The gateway named by PAYLINK_PAYMENT_GATEWAY."""
    from datetime import timedelta

    from app.payments.sandbox import SandboxGateway

    return SandboxGateway(settle_after=timedelta(seconds=config.ach_settle_seconds))
