"""Every `sam deploy --parameter-overrides` command the docs show parses, with SAM CLI's own parser, into parameters
the template declares, with empty values where they are meant to clear one.

Unquoted, `ModelS3VersionId=""` reaches SAM CLI as `ModelS3VersionId=` (the shell removes the quotes), which it
refuses: the whole deploy fails. Only the parser itself can say which spellings it takes.
"""

from __future__ import annotations

import re
import shlex

import pytest

from .conftest import REPO, load_template, sam_parameter_overrides

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _fenced_commands() -> list[tuple[str, str]]:
    """(doc, command) for each `sam deploy --parameter-overrides` line in a fenced block, continuations joined."""
    found = []
    for path in DOCS:
        fenced, command = False, None
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if not fenced:
                continue
            if command is None and "sam deploy --parameter-overrides" not in line:
                continue
            command = line.strip() if command is None else f"{command} {line.strip()}"
            if command.endswith("\\"):
                command = command[:-1]
                continue
            found.append((path.name, command))
            command = None
    return found


def _argv(command: str) -> list[str]:
    """What the shell would hand SAM CLI after --parameter-overrides, placeholders filled in."""
    filled = command.replace("$(out ModelBucketName)", "stack-modelbucket-1a2b3c").replace("$BUCKET", "my-bucket")
    filled = re.sub(r"<[^<>]*>", "x0", filled)
    words = shlex.split(filled, comments=True)
    return words[words.index("--parameter-overrides") + 1 :]


COMMANDS = _fenced_commands()


def test_the_docs_show_deploy_commands_with_overrides() -> None:
    assert len(COMMANDS) >= 2, COMMANDS  # README's and deploy.md's: the extraction found them


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_a_documented_override_list_parses_into_template_parameters(doc: str, command: str) -> None:
    [parsed] = sam_parameter_overrides([_argv(command)])
    assert isinstance(parsed, dict), f"{doc}: SAM CLI refuses `{command}`: {parsed}"
    assert set(parsed) <= set(load_template()["Parameters"]), parsed
    if "ModelS3VersionId" in command:
        assert parsed["ModelS3VersionId"] == "", parsed  # cleared, not left out and not a literal pair of quotes


def test_an_unquoted_empty_value_is_what_sam_cli_refuses() -> None:
    """The parser is the one that matters: the form the docs used to show is refused, the quoted ones are not."""
    unquoted, quoted = sam_parameter_overrides(
        [
            shlex.split('ModelS3Uri=s3://b/m/v ModelS3VersionId=""'),
            shlex.split("'ModelS3Uri=s3://b/m/v ModelS3VersionId=\"\"'"),
        ]
    )
    assert isinstance(unquoted, str) and "ModelS3VersionId=" in unquoted
    assert quoted == {"ModelS3Uri": "s3://b/m/v", "ModelS3VersionId": ""}
