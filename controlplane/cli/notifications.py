"""``keyward notifications``: where budget alerts go. A channel is a Slack-compatible incoming webhook
or a generic JSON webhook whose requests are signed; a webhook's signing secret is printed once (at
create and rotate-secret). Channels are named by id or name."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Literal

import typer

from controlplane.cli.client import Api, connect, payload
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize, QuietOpt, Yes
from controlplane.cli.output import (
    Columns,
    Exit,
    Row,
    at,
    confirm,
    done,
    fail,
    key,
    print_json,
    say,
    show_page,
    show_record,
)
from controlplane.cli.vocabulary import Kind

app = typer.Typer(help="Notification channels (Slack, signed webhooks) and what was delivered to them.",
                  no_args_is_help=True)
CHANNELS = Kind("notification channel", "/notification-channels", "name")
ChannelRef = Annotated[str, typer.Argument(help="Channel id or name.", metavar="CHANNEL")]
COLUMNS: Columns = [("ID", key("id")), ("NAME", key("name")), ("KIND", key("kind")), ("URL", key("url")),
                    ("ENABLED", key("enabled")), ("CREATED", at("created_at"))]


def _channel_id(api: Api, ref: str) -> str:
    return api.id_of(CHANNELS, ref)


def _issued(document: Row, as_json: bool, quiet: bool, summary: str) -> None:
    """A channel with its new signing secret (webhook channels), printed once."""
    secret = document.get("signing_secret")
    if as_json:
        print_json(document)
    elif quiet:
        sys.stdout.write((secret or "") + "\n")
    else:
        say(summary)
        if secret:
            say("\nSigning secret, shown this once (give it to the receiver, which checks Keyward-Signature "
                "with it; see docs/NOTIFICATIONS.md):\n")
            say(secret + "\n")


@app.command("list")
def channels_list(
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled", help="Only enabled (or disabled) ones.")]
    = None,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List notification channels (never their secrets)."""
    api = connect()
    page = api.listing("/notification-channels", {"enabled": enabled}, limit=limit, cursor=cursor,
                       follow=all_pages)
    show_page(page, COLUMNS, as_json, "notification channels")


@app.command("create")
def channels_create(
    name: Annotated[str, typer.Argument()],
    kind: Annotated[Literal["slack", "webhook"], typer.Option(help="slack: a Slack-compatible incoming webhook; "
                                                                   "webhook: generic JSON, signed.")],
    url: Annotated[str, typer.Option(help="The http(s) URL Keyward POSTs to.")],
    quiet: QuietOpt = False,
    as_json: JsonOut = False,
) -> None:
    """Add a channel. A webhook channel's signing secret is printed once."""
    created = connect().post("/notification-channels", payload(name=name, kind=kind, url=url))
    _issued(created, as_json, quiet, f"Created {created['kind']} channel {created['name']}, id {created['id']}.")


@app.command("show")
def channels_show(channel: ChannelRef, as_json: JsonOut = False) -> None:
    """Show one channel."""
    show_record(connect().find(CHANNELS, channel), as_json)


@app.command("update")
def channels_update(
    channel: ChannelRef,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    url: Annotated[str | None, typer.Option(help="A new URL.")] = None,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable",
                                                 help="Resume, or pause (pending deliveries wait).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Rename, re-point, pause or resume a channel."""
    body = payload(name=name, url=url, enabled=enabled)
    if not body:
        fail("nothing to change: give --name, --url, --enable or --disable", Exit.USAGE)
    api = connect()
    updated = api.patch(f"/notification-channels/{_channel_id(api, channel)}", body)
    show_record(updated, as_json, note=f"Updated channel {updated['name']}.")


@app.command("rotate-secret")
def channels_rotate(channel: ChannelRef, quiet: QuietOpt = False, as_json: JsonOut = False) -> None:
    """A new signing secret for a webhook channel, printed once; requests are signed with it from now on."""
    api = connect()
    rotated = api.post(f"/notification-channels/{_channel_id(api, channel)}/rotate-secret")
    _issued(rotated, as_json, quiet, f"Rotated the signing secret of channel {rotated['name']}.")


@app.command("remove")
def channels_remove(channel: ChannelRef, yes: Yes = False, as_json: JsonOut = False) -> None:
    """Remove a channel from service: disabled, its pending deliveries given up (its record stays)."""
    api = connect()
    ident = _channel_id(api, channel)
    confirm(f"Remove notification channel {channel}?", yes)
    removed = api.delete(f"/notification-channels/{ident}")
    done(as_json, removed, f"Removed channel {removed['name']}; its pending deliveries were given up.")


@app.command("test")
def channels_test(
    channel: ChannelRef,
    wait: Annotated[float, typer.Option(min=0, max=600, help="Seconds to wait for the outcome (0: do not wait).")]
    = 0,
    as_json: JsonOut = False,
) -> None:
    """Send a test notification to a channel. With --wait, exit 1 unless it was delivered in time."""
    api = connect()
    ident = _channel_id(api, channel)
    queued = api.post(f"/notification-channels/{ident}/test")
    if not wait:
        done(as_json, queued, f"Queued test delivery {queued['delivery_id']}.")
        return
    deadline = time.monotonic() + wait
    while True:
        listed = api.get("/notification-deliveries", {"channel_id": ident, "kind": "notification.test", "limit": 50})
        delivery = next((d for d in listed["items"] if d["id"] == queued["delivery_id"]), None)
        if delivery is None:
            fail(f"test delivery {queued['delivery_id']} is not listed")
        if delivery["status"] != "pending" or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if as_json:
        print_json(delivery)
    else:
        error = f": {delivery['last_error']}" if delivery.get("last_error") else ""
        say(f"Test delivery {delivery['id']}: {delivery['status']} after {delivery['attempts']} attempt(s){error}")
    if delivery["status"] != "delivered":
        raise typer.Exit(Exit.REFUSED)


@app.command("deliveries")
def deliveries_list(
    status: Annotated[Literal["pending", "delivered", "failed"] | None, typer.Option()] = None,
    channel: Annotated[str | None, typer.Option(help="Channel id or name.")] = None,
    kind: Annotated[str | None, typer.Option(help="e.g. notification.test")] = None,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """What was sent (and what is pending or failed), newest first."""
    api = connect()
    filters = {"status": status, "kind": kind, "channel_id": _channel_id(api, channel) if channel else None}
    page = api.listing("/notification-deliveries", filters, limit=limit, cursor=cursor, follow=all_pages)
    columns: Columns = [("ID", key("id")), ("CHANNEL", lambda r: api.label(CHANNELS, r["channel_id"])),
                        ("KIND", key("kind")), ("STATUS", key("status")), ("ATTEMPTS", key("attempts")),
                        ("CREATED", at("created_at")), ("DELIVERED", at("delivered_at")),
                        ("NEXT ATTEMPT", lambda r: at("next_attempt_at")(r) if r["status"] == "pending" else "-"),
                        ("LAST ERROR", key("last_error"))]
    show_page(page, columns, as_json, "deliveries")
