package version

import (
	"runtime"
	"runtime/debug"
)

// String is the module version the binary was built from ("dev" when not
// built from a tagged module), with "+" and the first 12 hex digits of the
// VCS revision when the build recorded one.
func String() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "dev"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += "+" + s.Value[:12]
		}
	}
	return v
}

// Line is what `cmd --version` prints: "cmd VERSION (goX.Y.Z)".
func Line(cmd string) string {
	return cmd + " " + String() + " (" + runtime.Version() + ")"
}
