# Phase timing shared by .ci/run and .ci/browser (source it): "::: NAME ..." when a phase begins,
# "::: NAME: N s" when it ends.
current=""
phase_start=$SECONDS
end_phase() {
    if [ -n "$current" ]; then
        echo "::: ${current}: $((SECONDS - phase_start)) s"
    fi
    current=""
}
begin_phase() {
    end_phase
    current=$1
    phase_start=$SECONDS
    echo "::: ${current} ..."
}
