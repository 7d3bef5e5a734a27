"""The base of Paylink's HTML forms: fields are read from the posted form only.

Flask-WTF's ``FlaskForm`` also fills fields from uploaded files (a multipart body) and
from a JSON body, so a text field could hold a file, a number or a list, and its
validators fail on it (``len()`` of a file) with a 500. Our pages post urlencoded forms:
files and JSON are bad input, read as an empty form (each field's own message, a 400).
"""

from __future__ import annotations

from typing import Any

from flask import request
from flask_wtf import FlaskForm
from flask_wtf.form import SUBMIT_METHODS


class Form(FlaskForm):
    class Meta(FlaskForm.Meta):
        def wrap_formdata(self, form: Any, formdata: Any) -> Any:
            if formdata is None or hasattr(formdata, "getlist"):
                return formdata  # the view's own: request.args, a MultiDict or none
            if request.method in SUBMIT_METHODS and request.form:
                return request.form
            return None
