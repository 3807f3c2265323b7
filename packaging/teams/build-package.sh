#!/usr/bin/env bash
# Build the Teams app package of diode-chat: a zip of manifest.json (with your bot's ids and your
# organisation's name and address filled in), color.png and outline.png, at the zip's root as Teams
# requires. Upload it in the Teams admin center (Manage apps -> Upload new app) or in Teams (Apps ->
# Manage your apps -> Upload an app). Step by step: docs/install-teams.md.
#
#   packaging/teams/build-package.sh --bot-id <Microsoft App ID of the Azure Bot> \
#       [--app-id <GUID>] [--developer-name <name>] [--website <https://...>] [--version <x.y.z>] \
#       [--out <file.zip>]
#
# --bot-id is the bot's Microsoft App ID ([teams] app_id in adapter.toml). --app-id is the Teams app's
# own id (default: the bot id, as Teams' own tools do). --website is shown as the publisher's website,
# privacy and terms pages. --version must grow each time you upload a changed package. Needs jq and zip.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bot_id="" app_id="" developer="" website="" version="" out="$PWD/diode-chat-teams.zip"
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --bot-id) bot_id="${2:-}"; shift 2 ;;
    --app-id) app_id="${2:-}"; shift 2 ;;
    --developer-name) developer="${2:-}"; shift 2 ;;
    --website) website="${2:-}"; shift 2 ;;
    --version) version="${2:-}"; shift 2 ;;
    --out) out="${2:-}"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "build-package.sh: unknown argument $1" >&2; usage ;;
  esac
done
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
guid='^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
[ -n "$bot_id" ] || { echo "build-package.sh: --bot-id is required (the Azure Bot's Microsoft App ID)" >&2; exit 2; }
[[ "$bot_id" =~ $guid ]] || { echo "build-package.sh: --bot-id $bot_id is not a GUID" >&2; exit 2; }
app_id="${app_id:-$bot_id}"
[[ "$app_id" =~ $guid ]] || { echo "build-package.sh: --app-id $app_id is not a GUID" >&2; exit 2; }
if [ -n "$website" ] && [[ "$website" != https://* ]]; then
  echo "build-package.sh: --website must be an https:// address (Teams refuses others)" >&2; exit 2
fi
if [ -n "$version" ] && ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  echo "build-package.sh: --version must be x.y.z" >&2; exit 2
fi
for tool in jq zip; do
  command -v "$tool" >/dev/null || { echo "build-package.sh: $tool is needed (apt-get install $tool)" >&2; exit 2; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
jq --arg bot "$bot_id" --arg app "$app_id" --arg dev "$developer" --arg web "$website" --arg ver "$version" '
  .id = $app
  | .bots[0].botId = $bot
  | if $dev != "" then .developer.name = $dev else . end
  | if $web != "" then .developer.websiteUrl = $web | .developer.privacyUrl = $web
      | .developer.termsOfUseUrl = $web else . end
  | if $ver != "" then .version = $ver else . end
' "$here/manifest.json" >"$work/manifest.json"
cp "$here/color.png" "$here/outline.png" "$work/"
rm -f "$out"
# -j: the three files at the zip's root; -X: no extra file attributes
(cd "$work" && zip -q -X -j "$out" manifest.json color.png outline.png)
echo "wrote $out (app id $app_id, bot id $bot_id)"
