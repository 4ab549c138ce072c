"""A table as Markdown and as LaTeX."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    name: str  # file stem under results/tables/
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        spec = "l" * 2 + "r" * (len(self.header) - 2)
        lines = [
            "\\begin{table}[t]",
            "\\centering",
            "\\scriptsize",
            f"\\caption{{{latex_escape(self.title)}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(latex_escape(h) for h in self.header) + " \\\\",
            "\\midrule",
            *[" & ".join(latex_escape(c) for c in row) + " \\\\" for row in self.rows],
            "\\bottomrule",
            "\\end{tabular}",
        ]
        if self.notes:
            lines += ["\\par\\smallskip", "\\begin{minipage}{\\linewidth}\\tiny"]
            lines += [latex_escape(note) + "\\\\" for note in self.notes]
            lines.append("\\end{minipage}")
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"


_LATEX = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "±": "$\\pm$",
    "—": "\\textemdash{}",
    "†": "$^\\dagger$",
    "‡": "$^\\ddagger$",
    "×": "$\\times$",
    "`": "",
}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX.get(ch, ch) for ch in text)
    return out.replace("r̄", "$\\bar r$")
