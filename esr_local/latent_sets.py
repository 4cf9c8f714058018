"""Named latent sets in the experiment log (`latent_sets` table): save a selection, load it for a run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import UserInputError
from .ids import new_id


@dataclass(frozen=True)
class LatentSet:
    """A stored selection: what RUNS puts in a run spec (`id`, `name`, `latents`, `labels`, `filters`)."""

    id: str
    name: str
    created_utc: str
    model_name: str | None
    sae_source: str
    sae_family: str | None
    d_sae: int
    feature_layer: int | None
    latents: list[int]
    labels: dict[int, str]
    funnel: dict[str, int]
    filters: list[dict]
    settings: dict

    def spec(self) -> dict:
        """The part of a run spec that names this set and how it was chosen."""
        return {"id": self.id, "name": self.name, "sae_source": self.sae_source, "latents": self.latents,
                "funnel": self.funnel, "settings": self.settings}


def _store(db_path_or_store, create: bool):
    from .store import Store

    if isinstance(db_path_or_store, Store):
        return db_path_or_store, False
    return Store(Path(db_path_or_store), create=create), True


def save_latent_set(db_path_or_store, name: str, selection, *, sae, sae_source: str, model_name: str | None,
                    replace: bool = False) -> LatentSet:
    """Store `selection` (from `selection.select_latents`) under `name`; UserInputError if the name is taken."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise UserInputError("a latent set needs a non-empty name (at most 200 characters)")
    store, owned = _store(db_path_or_store, create=True)
    try:
        table = store.db["latent_sets"]
        existing = list(table.rows_where("name = ?", [name]))
        if existing and not replace:
            raise UserInputError(f"a latent set named {name!r} already exists; choose another --name or pass --replace")
        row = {
            "id": new_id(), "name": name, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_name": model_name, "sae_source": sae_source, "sae_family": sae.info.family, "d_sae": sae.d_sae,
            "feature_layer": selection.settings.get("layer"), "n_requested": selection.settings["n"],
            "seed": selection.settings["seed"], "latents_json": json.dumps(selection.chosen),
            "labels_json": json.dumps({str(k): v for k, v in selection.labels.items()}),
            "funnel_json": json.dumps(selection.funnel),
            "filters_json": json.dumps({"candidates": selection.candidates, "errors": selection.errors}),
            "settings_json": json.dumps(selection.settings, default=str),
        }
        with store.transaction():
            if existing:
                table.delete_where("name = ?", [name])
            table.insert(row)
        return _from_row(row)
    finally:
        if owned:
            store.close()


def _from_row(row: dict) -> LatentSet:
    filters = json.loads(row["filters_json"])
    return LatentSet(
        id=row["id"], name=row["name"], created_utc=row["created_utc"], model_name=row["model_name"],
        sae_source=row["sae_source"], sae_family=row["sae_family"], d_sae=int(row["d_sae"]),
        feature_layer=row["feature_layer"], latents=[int(i) for i in json.loads(row["latents_json"])],
        labels={int(k): v for k, v in json.loads(row["labels_json"]).items()},
        funnel=json.loads(row["funnel_json"]), filters=filters.get("candidates", []),
        settings=json.loads(row["settings_json"]),
    )


def load_latent_set(db_path_or_store, name: str) -> LatentSet:
    """The latent set called `name` (or with that id); MissingResourceError listing the known names."""
    store, owned = _store(db_path_or_store, create=False)
    try:
        return _from_row(store.named_row("latent_sets", name, what="latent set", make_one="esr-local latents select"))
    finally:
        if owned:
            store.close()


def list_latent_sets(db_path_or_store) -> list[LatentSet]:
    """All stored sets, oldest first."""
    store, owned = _store(db_path_or_store, create=False)
    try:
        return [_from_row(r) for r in store.db["latent_sets"].rows_where(order_by="created_utc")]
    finally:
        if owned:
            store.close()
