"""``inferq keys create|list|revoke``: manage API keys in the store of ``INFERQ_RESULT_URL``.

``create`` prints what to keep first and the key itself alone on the last line, so a
script can take it with ``tail -n 1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from inferq.auth.keys import KeyStore

keys_app = typer.Typer(
    name="keys",
    help="Manage API keys (kept, hashed, in the job store of INFERQ_RESULT_URL).",
    no_args_is_help=True,
    add_completion=False,
)


def _store() -> KeyStore:
    from inferq.auth.keys import create_key_store
    from inferq.config import Settings

    settings = Settings()
    if settings.result_url.startswith("sqlite"):
        settings.ensure_home()
    return create_key_store(settings.result_url, settings.namespace)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@keys_app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
) -> None:
    """Make a key. Prints its id and webhook secret, then the key alone on the last line."""
    from inferq.errors import InferqError

    store = _store()
    try:
        key, plaintext = store.create(name)
    except (InferqError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    finally:
        store.close()
    typer.echo(f"created key {key.id} ({key.name!r}), prefix {key.prefix}")
    typer.echo(f"webhook secret (verifies this key's webhooks): {key.webhook_secret}")
    typer.echo("the key is shown only now; send it as 'Authorization: Bearer <key>':")
    typer.echo(plaintext)


@keys_app.command("list")
def list_keys() -> None:
    """Every key: id, prefix, name, created, and revoked if it was."""
    from inferq.errors import InferqError

    store = _store()
    try:
        keys = store.list()
    except InferqError as exc:
        raise _fail(str(exc)) from exc
    finally:
        store.close()
    for key in keys:
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M:%S}" if key.revoked_at else "active"
        typer.echo(f"{key.id}  {key.prefix}...  {key.created_at:%Y-%m-%d %H:%M:%S}  "
                   f"{state:<27} {key.name}")


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (or its prefix).")],
) -> None:
    """Revoke a key: the API refuses it within seconds (401)."""
    from inferq.errors import InferqError

    store = _store()
    try:
        revoked = store.revoke(key_id)
    except (InferqError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    finally:
        store.close()
    if not revoked:
        raise _fail(f"no active key {key_id!r}")
    typer.echo(f"revoked {key_id}")
