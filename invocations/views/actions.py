"""Single actions on one invocation: a confirmation (GET) and the action itself (POST).

GET never acts: it shows what the action will do and a form carrying a one-time
request key; the POST sends it through the operations service (which audits it
and makes a double submit of one form cost Restate one call). Viewers get 403 for
both, before anything is read or sent.
"""

from __future__ import annotations

import secrets

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods, require_safe

from invocations import restate
from invocations.mirror.actions import Action
from invocations.operations.roles import user_can_operate
from invocations.operations.services import NotAllowed, invocation_act
from invocations.reads.presenters.actions import (
    action_parse,
    confirmation_context,
    menu_context,
    result_context,
)
from invocations.reads.selectors.detail import InvocationNotFound
from invocations.views.errors import bad_request, forbidden, not_found
from invocations.views.http import HtmxHttpRequest

TEMPLATE = "invocations/_actions.html"
PAGE = "invocations/action.html"
MAX_REQUEST_KEY = 64


def _forbidden(request: HtmxHttpRequest) -> HttpResponse:
    return forbidden(
        request,
        "Your role is viewer: you can see everything and attach, but only operators can act on invocations.",
        title="Operators only",
    )


def _render(request: HtmxHttpRequest, part: str, context: dict, *, status: int = 200) -> HttpResponse:
    # htmx swaps the dialog alone; without JavaScript the same dialog is a page.
    if request.htmx:
        return render(request, f"{TEMPLATE}#{part}", context, status=status)
    return render(request, PAGE, context | {"part": part}, status=status)


def _id_problem(request: HtmxHttpRequest, invocation_id: str) -> HttpResponse | None:
    try:
        restate.validate_invocation_id(invocation_id)
    except restate.InvalidInvocationId as exc:
        return bad_request(request, "Not an invocation id", str(exc))
    return None


@require_safe
@login_required
def action_menu(request: HtmxHttpRequest, invocation_id: str) -> HttpResponse:
    """The actions Restate allows for one invocation now: a tree row's "⋯" opens this."""
    if not user_can_operate(request.user):
        return _forbidden(request)
    if problem := _id_problem(request, invocation_id):
        return problem
    try:
        context = menu_context(invocation_id=invocation_id)
    except InvocationNotFound:
        return not_found(request, "Invocation not found", f"{invocation_id} is not in our copy of Restate.")
    return _render(request, "menu_dialog", context | {"invocation_id": invocation_id})


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def invocation_action(request: HtmxHttpRequest, invocation_id: str, action_name: str) -> HttpResponse:
    # The role first: a viewer learns nothing and nothing is sent (403 for GET and POST).
    if not user_can_operate(request.user):
        return _forbidden(request)
    action = action_parse(action_name)
    if action is None:
        return not_found(
            request,
            "Unknown action",
            f"{action_name!r} is not an action; the actions are {', '.join(a.value for a in Action)}.",
        )
    if problem := _id_problem(request, invocation_id):
        return problem
    if request.method == "POST":
        return _act(request, invocation_id, action)
    try:
        context = confirmation_context(invocation_id=invocation_id, action=action)
    except InvocationNotFound:
        return not_found(request, "Invocation not found", f"{invocation_id} is not in our copy of Restate.")
    # A fresh key per confirmation: submitting this form twice is one action.
    context["request_key"] = secrets.token_urlsafe(16)
    context["invocation_id"] = invocation_id
    # 409: Restate would refuse it in this status, so the page offers no button. htmx
    # drops 4xx answers by default, so its dialog comes as a 200 saying the same.
    refused = 409 if not context["allowed"] and not request.htmx else 200
    return _render(request, "confirm", context, status=refused)


def _act(request: HtmxHttpRequest, invocation_id: str, action: Action) -> HttpResponse:
    request_key = request.POST.get("request_key", "")
    if not request_key or len(request_key) > MAX_REQUEST_KEY:
        return bad_request(
            request,
            "Missing confirmation",
            "The action needs the one-time key of its confirmation form: open the confirmation and submit it.",
        )
    try:
        result = invocation_act(
            user=request.user,  # type: ignore[arg-type]  # login_required: an authenticated user
            action=action,
            invocation_id=invocation_id,
            request_key=request_key,
        )
    except NotAllowed:
        return _forbidden(request)
    context = result_context(invocation_id=invocation_id) | {
        "result": result,
        "action": action,
        "invocation_id": invocation_id,
    }
    return _render(request, "result", context)
