"""Payment-plan offers, plan math, plans and installments."""
