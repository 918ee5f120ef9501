"""Hugging Face Hub model ids (``Org/Name`` or ``Org/Name@revision``) through ``huggingface_hub``.

A local path always wins: an id is only looked up when no file or directory of
that name exists. ``huggingface_hub`` owns the cache (``HF_HOME`` /
``HF_HUB_CACHE``), offline mode (``HF_HUB_OFFLINE=1`` serves the cache only),
tokens and the download progress bar. Only what Ferrum loads is fetched:
configs, tokenizer files, safetensors and GGUF files (never pickles).
"""

from __future__ import annotations

import re
from pathlib import Path

from ferrum_core.errors import ModelLoadError

__all__ = ["HUB_PATTERNS", "looks_like_hub_id", "split_hub_id", "hub_snapshot"]

HUB_PATTERNS = ["*.json", "*.safetensors", "*.gguf", "tokenizer*", "*.jinja", "*.txt"]
"""Files fetched from a repository: everything Ferrum reads, no pickles."""

_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}(@[\w./-]{1,200})?$")


def looks_like_hub_id(text: str) -> bool:
    """``Org/Name`` or ``Org/Name@revision`` (and not a path that starts with / . or ~)."""
    return bool(_ID.match(text)) and not text.startswith((".", "/", "~"))


def split_hub_id(text: str) -> tuple[str, str | None]:
    """``("Org/Name", "revision" or None)``."""
    repo, _, revision = text.partition("@")
    return repo, revision or None


def hub_snapshot(text: str) -> Path:
    """The local snapshot directory of a Hub id, downloaded once into the Hub cache."""
    repo, revision = split_hub_id(text)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise ModelLoadError(
            f"{text!r} is not a local path, and Hub model ids need huggingface_hub: "
            "pip install 'ferrum-core[hub]'"
        ) from None
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"model {text!r} is not a local path and not in the Hugging Face cache, and the "
            "Hub cannot be reached (offline: HF_HUB_OFFLINE or no network)"
        ) from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"model {repo!r} has no revision {revision!r} on the Hub") from None
    except GatedRepoError:
        raise ModelLoadError(
            f"model {repo!r} is gated: accept its terms on the Hub and log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"model {text!r} is neither a local path nor a Hugging Face Hub repository "
            "(or it is private: log in with hf auth login)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:  # network, bad ids, a full disk
        message = " ".join(str(exc).split())[:200]
        raise ModelLoadError(f"model {text!r}: Hub lookup failed ({message})") from None
