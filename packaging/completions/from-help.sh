#!/usr/bin/env bash
# Bash completion for one of the suite's binaries, read off its own `--help` (every subcommand and
# subcommand of a subcommand, their options, file names after options that take a path). Used by
# packaging/build-debs.sh while the binaries have no `completions` subcommand of their own (clap_complete).
#   from-help.sh target/release/diode-recv > diode-recv.bash
set -euo pipefail
bin=$1
name=$(basename "$bin")
fn="_${name//-/_}"

commands() { "$bin" "$@" --help | awk '/^Commands:/{f=1;next} /^[^ ]/{f=0} f&&NF{print $1}' | grep -vx help || true; }
options() { "$bin" "$@" --help | grep -oE '^ +(-[a-zA-Z], )?--[a-z0-9-]+' | grep -oE -- '--[a-z0-9-]+' || true; }
valued() { "$bin" "$@" --help | grep -oE -- '--[a-z0-9-]+ <[A-Z_]+>' | cut -d' ' -f1 || true; }

declare -A table
all_valued=$(valued)
walk() {
  local path="$*"
  table["@$path"]="$(commands "$@" | tr '\n' ' ')$(options "$@" | tr '\n' ' ')"
  all_valued+=$'\n'"$(valued "$@")"
  local c
  for c in $(commands "$@"); do walk "$@" "$c"; done
}
walk

echo "# bash completion for $name, generated from its --help by packaging/completions/from-help.sh"
echo "$fn() {"
echo '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} path="" skip=0 w'
echo "    local valued=\" $(echo "$all_valued" | sort -u | tr '\n' ' ') \""
echo '    for w in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do'
echo '        if [ $skip = 1 ]; then skip=0; continue; fi'
echo '        case "$w" in -*) [[ $valued == *" $w "* ]] && skip=1 ;; *) path+="${path:+ }$w" ;; esac'
echo '    done'
echo '    if [[ $valued == *" $prev "* ]]; then'
echo '        COMPREPLY=( $(compgen -f -- "$cur") )'
echo '        return'
echo '    fi'
echo '    local words'
echo '    case "$path" in'
for k in "${!table[@]}"; do
  printf '        "%s") words="%s" ;;\n' "${k#@}" "${table[$k]% }"
done | sort
echo '        *) COMPREPLY=( $(compgen -f -- "$cur") ); return ;;'
echo '    esac'
echo '    COMPREPLY=( $(compgen -W "$words" -- "$cur") )'
echo "}"
echo "complete -F $fn $name"
