package policy

import (
	"slices"
	"strings"
	"testing"
)

func TestCredentialCorpus(t *testing.T) {
	for _, tc := range credentialCorpus() {
		t.Run(tc.name, func(t *testing.T) {
			got := CredentialKinds(tc.text)
			want := tc.kinds
			if want == nil {
				want = []string{}
			}
			if !slices.Equal(got, want) {
				t.Errorf("CredentialKinds = %q, want %q", got, want)
			}
			if has := HasCredentials(tc.text); has != (len(want) > 0) {
				t.Errorf("HasCredentials = %v, want %v", has, len(want) > 0)
			}
		})
	}
}

// A credential is found wherever it sits in a larger prompt, and not when
// one character is cut off or added.
func TestCredentialBoundaries(t *testing.T) {
	key := "ghp_" + fake(90, alnumChars, 36)
	for _, tc := range []struct {
		name string
		text string
		want bool
	}{
		{"alone", key, true},
		{"quoted", `"` + key + `"`, true},
		{"in a long prompt", typicalPrompt(4000) + " token=" + key + "\n" + typicalPrompt(4000), true},
		{"end of sentence", "my token is " + key + ".", true},
		{"too short", key[:len(key)-1], false},
		{"glued to a word", "x" + key, false},
	} {
		if got := HasCredentials(tc.text); got != tc.want {
			t.Errorf("%s: HasCredentials = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCredentialKindNames(t *testing.T) {
	seen := map[string]bool{}
	for k := credKind(0); k < numCredKinds; k++ {
		name := credKindNames[k]
		if name == "" || seen[name] || strings.ToLower(name) != name {
			t.Errorf("kind %d has a bad or duplicate name %q", k, name)
		}
		seen[name] = true
	}
	all := credSet(1<<numCredKinds - 1).names()
	if !slices.IsSorted(all) || len(all) != int(numCredKinds) {
		t.Errorf("names() = %q, want all %d kinds sorted", all, numCredKinds)
	}
}

func TestTypicalPromptsAreClean(t *testing.T) {
	for _, n := range []int{200, 4 << 10, 64 << 10} {
		if kinds := CredentialKinds(typicalPrompt(n)); len(kinds) != 0 {
			t.Errorf("typicalPrompt(%d) has %q", n, kinds)
		}
	}
}
