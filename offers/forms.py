"""The forms of the offer flow at /o/<token>. Every one carries a CSRF token.

The button, verification, card and bank forms are the link flow's (``links.forms``), so the
same fields are checked the same way. Labels are the contract's words: **Full name** for the
typed signature, and every consent checkbox label begins with **I agree**. Checks here are
about shape only; the name rule and the drawn signature are checked in ``signing.service``.
"""

from __future__ import annotations

from wtforms import BooleanField, HiddenField, RadioField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional

from app.forms import Form
from links.forms import BankForm, ButtonForm, CardForm, VerifyForm, save_method

__all__ = [
    "BankForm",
    "ButtonForm",
    "CardForm",
    "ConsentForm",
    "SignForm",
    "TermsForm",
    "VerifyForm",
    "save_method",
]


class ConsentForm(Form):
    """The E-SIGN disclosure page."""

    agree = BooleanField(
        "I agree to receive the records of this payment plan electronically and to sign "
        "electronically, as described above",
        validators=[DataRequired("Check the box to agree to electronic records and signing.")],
    )


class TermsForm(Form):
    """The terms and recurring payment authorization page. ``text_sha256`` names the text
    shown, so a change between showing and agreeing is noticed."""

    text_sha256 = HiddenField()
    agree = BooleanField(
        "I agree to the payment plan terms and authorize the payments above",
        validators=[DataRequired("Check the box to accept the terms and the authorization.")],
    )


class SignForm(Form):
    """Type the full name, or draw a signature (the pad needs JavaScript; without it the
    choice is not shown and the typed name is the signature)."""

    # The offer this page was shown for (the token's id): a form posted to another offer's
    # address is refused.
    offer_ref = HiddenField()
    signature_method = RadioField(
        "How would you like to sign?",
        choices=[
            SelectChoice("typed", "Type my name"),
            SelectChoice("drawn", "Draw my signature"),
        ],
        default="typed",
        validators=[Optional()],
    )
    full_name = StringField(
        "Full name",
        validators=[DataRequired("Type your full name."), Length(max=200)],
    )
    # A PNG data URL written by app/static/signature.js; its size is checked by the service.
    signature_png = HiddenField()
    agree = BooleanField(
        "I agree that the name I typed, or the signature I drew, is my electronic signature "
        "on this agreement",
        validators=[DataRequired("Check the box to sign the agreement.")],
    )
