"""Is this artifact the reference, deployed? Its model card says which file it was exported from.

``infoard-deploy export`` writes ``<stem>.card.json`` beside every artifact with ``provenance.source_sha256``
(the sha256 of the checkpoint it was exported from) and ``provenance.artifact_sha256`` (of the file it
wrote). :func:`artifact_provenance` compares them with the reference file verified against and with
the artifact file on disk:

* ``match``      -- exported from the reference and unchanged since;
* ``mismatch``   -- exported from another checkpoint (a retrained model of the same architecture ships
  as easily as the verified one and can match its accuracy);
* ``modified``   -- exported from the reference, but the file differs from what the export wrote;
* ``unrecorded`` -- the card records no source sha256;
* ``cardless``   -- no card at all: refused with a one-line :class:`UserError` unless ``allow_cardless``,
  which verifies it anyway and marks the report prominently.

The card also supplies the artifact's precision, its export tolerances (the verify gates' bounds) and,
for an engine, the ONNX graph it was built from (the own-graph attack differentiates that graph).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import UserError
from ..utils import sha256_file


def artifact_provenance(path: Path, reference_sha: Optional[str], allow_cardless: bool) -> Dict[str, Any]:
    from ..card import card_path_for, load_card

    card = load_card(path, required=False)  # a malformed card is a UserError of its own
    info: Dict[str, Any] = {"card": str(card_path_for(path)) if card is not None else None,
                            "reference_sha256": reference_sha, "allow_cardless": bool(allow_cardless)}
    if card is None:
        if not allow_cardless:
            raise UserError(f"{path.name} has no model card ({card_path_for(path).name}): nothing says which model "
                            f"it was exported from; re-export it with infoard-deploy export, or pass "
                            f"--allow-cardless to verify it anyway")
        info.update(status="cardless", source_sha256=None, tolerances=None, precision=None)
        return info
    prov = card.provenance or {}
    gate = (card.metrics or {}).get("gate") if isinstance(card.metrics, dict) else None
    info.update(source_sha256=prov.get("source_sha256"), precision=card.precision,
                tolerances=(gate or {}).get("tolerances") if isinstance(gate, dict) else None,
                profiles=prov.get("profiles"), source_onnx=(card.extra or {}).get("source_onnx"))
    recorded = prov.get("artifact_sha256")
    actual = sha256_file(path)
    info["artifact_sha256"] = actual
    if not info["source_sha256"]:
        info["status"] = "unrecorded"
    elif reference_sha is None:
        info["status"] = "unverifiable"
    elif info["source_sha256"] != reference_sha:
        info["status"] = "mismatch"
    elif recorded and recorded != actual:
        info["status"] = "modified"
        info["recorded_artifact_sha256"] = recorded
    else:
        info["status"] = "match"
    return info


def provenance_message(info: Dict[str, Any]) -> str:
    st = info.get("status")
    ref = (info.get("reference_sha256") or "?")[:12]
    src = (info.get("source_sha256") or "?")[:12]
    if st == "match":
        return f"exported from the reference (source sha256 {src}...) and unchanged since"
    if st == "mismatch":
        return f"card says exported from sha256 {src}..., the reference is {ref}...: another model"
    if st == "modified":
        return (f"exported from the reference, but the file (sha256 {info['artifact_sha256'][:12]}...) is not the "
                f"one the export wrote ({info['recorded_artifact_sha256'][:12]}...): modified after export")
    if st == "unrecorded":
        return "the card records no source_sha256: cannot tell which model it was exported from"
    if st == "unverifiable":
        return "the reference file is not on disk: cannot compare the card's source_sha256 with it"
    return "NO MODEL CARD: provenance unknown, verified anyway (--allow-cardless)"


__all__ = ["artifact_provenance", "provenance_message"]
