"""The package's own shape: what its code and messages say to users, and how it is layered."""

from conftest import REPO


def test_code_states_rules_instead_of_citing_the_spec():
    """Users of the package never see SPEC.md: docstrings and messages state the rule."""
    cited = [
        f"{p.relative_to(REPO)}:{n}"
        for p in sorted((REPO / "gptcli").rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "SPEC" in line
    ]
    assert not cited, cited
