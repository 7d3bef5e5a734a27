"""The forms of the payment flow at /p/<token>. Every one carries a CSRF token.

Labels are the contract's words (contract.md, Customer pages). The checks here are about
shape only; amounts, dates, card and bank numbers are checked by ``links.checkout`` and
``app.payments`` so the rules live in one place.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, RadioField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, Regexp

from links.checkout import VERIFICATION_LABELS

ZIP_PATTERN = r"^\s*[0-9]{5}(-?[0-9]{4})?\s*$"
# Numbers as people type them: ASCII digits, spaces, dashes.
DIGITS = Regexp(r"^[0-9 -]*$", message="Use digits only.")


class ButtonForm(FlaskForm):
    """A form that is only a button (Next, Skip, Email receipt): the CSRF token alone."""


class VerifyForm(FlaskForm):
    method = HiddenField()
    ssn_last4 = StringField(VERIFICATION_LABELS["ssn_last4"], validators=[Length(max=20)])
    date_of_birth = StringField(VERIFICATION_LABELS["date_of_birth"], validators=[Length(max=20)])
    zip = StringField(VERIFICATION_LABELS["zip"], validators=[Length(max=20)])


class OfferForm(FlaskForm):
    offer = RadioField(
        "Choose an offer",
        choices=[],
        validate_choice=True,
        validators=[InputRequired("Choose one of the offers.")],
    )


class AmountForm(FlaskForm):
    amount = StringField("Amount", validators=[Length(max=30)])


class CardForm(FlaskForm):
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


class BankForm(FlaskForm):
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


class ScheduleForm(FlaskForm):
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


class ReviewForm(FlaskForm):
    agreement_sha256 = HiddenField()
    agree = BooleanField(
        "I agree to the payment authorization above and confirm these payments",
        validators=[DataRequired("Check the box to accept the payment authorization.")],
    )
