# builder of writeText: $text verbatim into $out.
printf '%s' "$text" > "$out"
