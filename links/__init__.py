"""Payment links: signed expiring links and the customer payment flow."""
