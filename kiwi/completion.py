"""Shell completion: `kiwi completion bash|zsh|fish` prints a small script that
asks `kiwi __complete -- <words>` for the candidates of the last word.

The candidates come from the same argparse parser as --help, the man pages and
`kiwi terminal` (terminal.Completer: commands, options, choices), plus the
names of containers, images and sessions read from the data folder. A data
folder the user cannot read (it is root's, 0700) completes no names, and never
prints an error into the user's command line.
"""

from __future__ import annotations

SHELLS = ("bash", "zsh", "fish")

BASH = r"""# kiwi completion for bash: eval "$(kiwi completion bash)" or save it as
# /etc/bash_completion.d/kiwi
_kiwi() {
    local IFS=$'\n' cur=${COMP_WORDS[COMP_CWORD]}
    COMPREPLY=($("${COMP_WORDS[0]}" __complete -- "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
    [ ${#COMPREPLY[@]} -gt 0 ] || COMPREPLY=($(compgen -f -- "$cur"))
}
complete -F _kiwi kiwi ./kiwi
"""

ZSH = r"""#compdef kiwi
# kiwi completion for zsh: kiwi completion zsh > "${fpath[1]}/_kiwi", or
# source <(kiwi completion zsh) after compinit
_kiwi() {
    local -a found
    found=("${(@f)$(${words[1]} __complete -- "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    if (( ${#found} )) && [[ -n ${found[1]} ]]; then
        compadd -Q -- "${found[@]}"
    else
        _files
    fi
}
compdef _kiwi kiwi
"""

FISH = r"""# kiwi completion for fish: kiwi completion fish > ~/.config/fish/completions/kiwi.fish
function __kiwi_complete
    set -l words (commandline -opc)
    $words[1] __complete -- $words[2..-1] (commandline -ct) 2>/dev/null
end
complete -c kiwi -f -a '(__kiwi_complete)'
"""


def script(shell: str) -> str:
    return {"bash": BASH, "zsh": ZSH, "fish": FISH}[shell]


def candidates(words: list[str], parser) -> list[str]:
    """What the last word can become; the words before it are the command line so far
    (parser: cli.build_parser(), handed in: this module sits below the CLI)."""
    from .terminal import LEAVE_WORDS, Completer

    *before, current = words or [""]
    found = Completer(readable_store(), parser).candidates(before, current)
    return [w.rstrip(" ") for w in found if before or w.rstrip(" ") not in LEAVE_WORDS]


def readable_store():
    """The data folder when this user may read it, else None (names then complete to nothing)."""
    from .errors import KiwiError
    from .store import Store

    try:
        return Store.open()
    except (KiwiError, OSError):
        return None
