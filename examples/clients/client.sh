#!/usr/bin/env bash
# Needs nc from netcat-openbsd (apt-get install netcat-openbsd).
coproc GUARD { nc -U "$AGENT_GUARD_SOCKET"; }
echo '{"op":"subscribe"}' >&"${GUARD[1]}"
while IFS= read -r line <&"${GUARD[0]}"; do
  case $line in *'"event":"drain"'*)
    echo "draining: $line"
    # ... stop taking new work, finish what is in flight ...
    echo '{"op":"drained"}' >&"${GUARD[1]}" ;;
  esac
done
