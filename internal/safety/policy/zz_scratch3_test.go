package policy

import "testing"

func TestScratchPEM(t *testing.T) {
	for _, body := range []string{
		"NotARealKeyJustFakeTestDataForCortexOSPolicyTestsQ7W2Z9V4J6K8X3M5B1N0Y/+PlsIgnoreMe",
		"NotARealKey/Fake+TestData4CortexOS/PolicyTests/qWzVjKxMbNyU7258036914/NothingToSeeHereFolks+ok",
	} {
		s := "-----BEGIN FAKE TEST PRIVATE KEY-----\n" + body
		t.Logf("%v %.3f %v", HasCredentials(s), shannon(body[:100]), CredentialKinds(s))
	}
}
