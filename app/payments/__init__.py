"""Payment gateways behind one interface: the sandbox for development and tests, a real
gateway adapter in production. Card numbers and security codes go to the gateway and
nowhere else: Paylink keeps the gateway's token, the brand, the last 4 and the expiry."""
