# Shared by compare.sh and profile.sh: builds (release) and prints the path
# of the load bench's executable.
load_bin() {
    cargo bench --bench load --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "load" and m.get("executable"):
        print(m["executable"])'
}
