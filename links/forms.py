"""The forms of the payment flow at /p/<token>. Every one carries a CSRF token.

Labels are the contract's words (contract.md, Customer pages). The checks here are about
shape only; amounts, dates, card and bank numbers are checked by ``links.checkout`` and
``app.payments`` so the rules live in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy.orm import Session
from wtforms import BooleanField, Field, HiddenField, RadioField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, Regexp

from app.forms import Form
from app.models import Account
from app.payments import service as payments
from app.payments.gateway import Gateway
from app.payments.models import PaymentMethod
from links.checkout import VERIFICATION_LABELS

ZIP_PATTERN = r"^\s*[0-9]{5}(-?[0-9]{4})?\s*$"
# Numbers as people type them: ASCII digits, spaces, dashes.
DIGITS = Regexp(r"^[0-9 -]*$", message="Use digits only.")


class ButtonForm(Form):
    """A form that is only a button (Next, Skip, Email receipt): the CSRF token alone."""


class VerifyForm(Form):
    method = HiddenField()
    ssn_last4 = StringField(VERIFICATION_LABELS["ssn_last4"], validators=[Length(max=20)])
    date_of_birth = StringField(VERIFICATION_LABELS["date_of_birth"], validators=[Length(max=20)])
    zip = StringField(VERIFICATION_LABELS["zip"], validators=[Length(max=20)])

    @classmethod
    def for_methods(cls, methods: Sequence[str], asked: str | None) -> VerifyForm:
        """The form for the method asked for, if the page offers it, else its first."""
        form = cls()
        form.method.data = asked if asked in methods else methods[0]
        return form

    @property
    def answer(self) -> Field:
        """The field of the chosen method."""
        return getattr(self, self.method.data)

    def page_context(self, methods: Sequence[str]) -> dict[str, Any]:
        """What the verification templates show: the form, its field, and the other
        methods to switch to. The last 4 of an SSN is never echoed back."""
        if self.method.data == "ssn_last4":
            self.answer.data = ""
        others = [(m, VERIFICATION_LABELS[m]) for m in methods if m != self.method.data]
        return {"form": self, "field": self.answer, "method": self.method.data, "others": others}


class OfferForm(Form):
    offer = RadioField(
        "Choose an offer",
        choices=[],
        validate_choice=True,
        validators=[InputRequired("Choose one of the offers.")],
    )


class AmountForm(Form):
    amount = StringField("Amount", validators=[Length(max=30)])


class MethodForm(Form):
    """The card and bank forms' shared handling of what must never go back to the browser."""

    SECRET_FIELDS: tuple[str, ...] = ()
    HINT_FIELD = ""  # the number whose last 4 digits may be shown back

    def forget_secrets(self) -> str | None:
        """Blank the secret fields, whatever happened, and return the last 4 digits of the
        number typed ("you entered a card ending 4241"), if it had 4."""
        digits = "".join(ch for ch in (getattr(self, self.HINT_FIELD).data or "") if ch.isdigit())
        for name in self.SECRET_FIELDS:
            getattr(self, name).data = ""
            getattr(self, name).raw_data = []
        return digits[-4:] if len(digits) >= 4 else None


def save_method(
    session: Session,
    account: Account,
    gateway: Gateway,
    form: CardForm | BankForm,
    *,
    today: date,
    now: datetime,
) -> PaymentMethod:
    """Tokenize the typed card or bank account at once: the number goes to the gateway and
    is then forgotten. Raises cards.InvalidPaymentDetail naming the field at fault."""
    if isinstance(form, CardForm):
        card = payments.CardInput(
            name=(form.name.data or "").strip(),
            number=form.number.data or "",
            expiry=form.expiry.data or "",
            security_code=form.security_code.data or "",
            zip=(form.zip.data or "").strip()[:10],
        )
        return payments.add_card(session, account, gateway, card, today, now)
    bank = payments.BankInput(
        holder_name=(form.holder_name.data or "").strip(),
        routing_number=form.routing_number.data or "",
        account_number=form.account_number.data or "",
        account_type=form.account_type.data or "",
    )
    return payments.add_bank_account(session, account, gateway, bank, now)


class CardForm(MethodForm):
    kind = HiddenField(default="card")
    name = StringField(
        "Name on card",
        validators=[DataRequired("Enter the name on the card."), Length(max=200)],
    )
    number = StringField(
        "Card number",
        validators=[DataRequired("Enter the card number."), Length(max=30), DIGITS],
    )
    expiry = StringField(
        "Expiration (MM/YY)",
        validators=[DataRequired("Enter the expiration date as MM/YY."), Length(max=10)],
    )
    security_code = StringField(
        "Security code",
        validators=[DataRequired("Enter the security code."), Length(max=10), DIGITS],
    )
    zip = StringField(
        "ZIP",
        validators=[
            DataRequired("Enter the billing ZIP code."),
            Regexp(ZIP_PATTERN, message="Enter a 5-digit ZIP code."),
        ],
    )

    # Never sent back to the browser, whatever happened.
    SECRET_FIELDS = ("number", "security_code")
    HINT_FIELD = "number"


class BankForm(MethodForm):
    kind = HiddenField(default="bank")
    holder_name = StringField(
        "Name on account",
        validators=[DataRequired("Enter the name on the account."), Length(max=200)],
    )
    routing_number = StringField(
        "Routing number",
        validators=[DataRequired("Enter the 9-digit routing number."), Length(max=20), DIGITS],
    )
    account_number = StringField(
        "Account number",
        validators=[DataRequired("Enter the account number."), Length(max=30), DIGITS],
    )
    account_type = RadioField(
        "Account type",
        choices=[SelectChoice("checking", "Checking"), SelectChoice("savings", "Savings")],
        default="checking",
        validators=[InputRequired("Choose checking or savings.")],
    )

    SECRET_FIELDS = ("account_number",)
    HINT_FIELD = "account_number"


class ScheduleForm(Form):
    when = RadioField(
        "When would you like to pay?",
        choices=[SelectChoice("now", "Pay now"), SelectChoice("later", "Schedule for later")],
        default="now",
        validators=[InputRequired("Choose when to pay.")],
    )


def schedule_form(max_payments: int) -> ScheduleForm:
    """The schedule form with one date and amount per payment the settings allow."""

    class Form(ScheduleForm):
        pass

    for n in range(1, max_payments + 1):
        setattr(Form, f"date_{n}", StringField(f"Date of payment {n}", [Length(max=20)]))
        setattr(Form, f"amount_{n}", StringField(f"Amount of payment {n}", [Length(max=30)]))
    return Form()


class ReviewForm(Form):
    agreement_sha256 = HiddenField()
    agree = BooleanField(
        "I agree to the payment authorization above and confirm these payments",
        validators=[DataRequired("Check the box to accept the payment authorization.")],
    )
