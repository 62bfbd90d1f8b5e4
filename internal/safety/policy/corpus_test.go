package policy

import (
	"encoding/base64"
	"math/rand/v2"
	"strings"
)

// The labelled credential corpus. Every key is obviously fake but has the
// right format; each is built at run time from a prefix and a
// pseudo-random body so that no secret scanner flags this repository.

const (
	upperChars  = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	lowerChars  = "abcdefghijklmnopqrstuvwxyz"
	digitChars  = "0123456789"
	hexChars    = "0123456789abcdef"
	alnumChars  = upperChars + lowerChars + digitChars
	b64Chars    = alnumChars + "+/"
	b64URLChars = alnumChars + "-_"
	base32Chars = upperChars + "234567"
)

// fake returns n pseudo-random characters from alphabet; the same seed
// gives the same string.
func fake(seed uint64, alphabet string, n int) string {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(b)
}

func b64url(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// pemKey returns a PEM block with lines of base64; escaped joins the lines
// with a JSON-escaped \n instead of a real line break.
func pemKey(label string, seed uint64, lines int, escaped bool, headers ...string) string {
	nl := "\n"
	if escaped {
		nl = `\n`
	}
	var b strings.Builder
	b.WriteString("-----BEGIN " + label + "-----" + nl)
	for _, h := range headers {
		b.WriteString(h + nl)
	}
	if len(headers) > 0 {
		b.WriteString(nl)
	}
	for i := range lines {
		b.WriteString(fake(seed+uint64(i), b64Chars, 64) + nl)
	}
	b.WriteString(fake(seed+99, b64Chars, 20) + "==" + nl)
	b.WriteString("-----END " + label + "-----")
	return b.String()
}

type corpusCase struct {
	name string
	text string
	// kinds is what CredentialKinds must return; nil for a negative.
	kinds []string
}

func credentialCorpus() []corpusCase {
	awsID := "AKIA" + fake(1, base32Chars, 16)
	stsID := "ASIA" + fake(2, base32Chars, 16)
	awsSecret := fake(3, b64Chars, 40)
	jwt := b64url(`{"alg":"HS256","typ":"JWT"}`) + "." +
		b64url(`{"sub":"1234567890","name":"Demo User","iat":1516239022}`) + "." + fake(20, b64URLChars, 43)
	discordBot := base64.RawURLEncoding.EncodeToString([]byte("81234567890123456"+"7")) + "." +
		fake(21, b64URLChars, 6) + "." + fake(22, b64URLChars, 38)
	openAIProj := "sk-" + "proj-" + fake(23, b64URLChars, 156)
	gcpJSON := `{"type": "service_account", "project_id": "demo-project", "private_key_id": "` + fake(24, hexChars, 40) +
		`", "private_key": "` + pemKey("PRIVATE KEY", 100, 12, true) +
		`\n", "client_email": "robot@demo-project.iam.gserviceaccount.com", "client_id": "1234"}`

	pos := []corpusCase{
		{"aws access key id", "my key is " + awsID + " please check it", []string{"aws_access_key_id"}},
		{"aws sts id with secret", "creds:\n  id: " + stsID + "\n  key: " + fake(4, b64Chars, 40) + "\n", []string{"aws_access_key_id", "aws_secret_access_key"}},
		{"aws env file", "AWS_ACCESS_KEY_ID=" + awsID + "\nAWS_SECRET_ACCESS_KEY=" + awsSecret + "\n", []string{"aws_access_key_id", "aws_secret_access_key"}},
		{"aws secret with context", "here is my aws secret key: " + awsSecret, []string{"aws_secret_access_key"}},
		{"gcp service account json", gcpJSON, []string{"gcp_service_account_key", "private_key"}},
		{"azure connection string", "DefaultEndpointsProtocol=https;AccountName=demo;AccountKey=" + fake(5, b64Chars, 86) + "==;EndpointSuffix=core.windows.net", []string{"azure_storage_key"}},
		{"azure key alone", "azure storage key " + fake(6, b64Chars, 86) + "==", []string{"azure_storage_key"}},
		{"slack bot token", "SLACK_BOT_TOKEN=" + "xoxb-" + fake(7, digitChars, 12) + "-" + fake(8, digitChars, 13) + "-" + fake(9, alnumChars, 24), []string{"slack_token"}},
		{"slack user token", "token: " + "xoxp-" + fake(10, digitChars, 11) + "-" + fake(11, digitChars, 12) + "-" + fake(12, digitChars, 13) + "-" + fake(13, hexChars, 32), []string{"slack_token"}},
		{"slack webhook", "post to https://" + "hooks.slack.com/services/T" + fake(14, upperChars+digitChars, 10) + "/B" + fake(15, upperChars+digitChars, 10) + "/" + fake(16, alnumChars, 24) + " now", []string{"slack_webhook"}},
		{"discord bot token", "client.login('" + discordBot + "')", []string{"discord_bot_token"}},
		{"discord webhook", "https://" + "discord.com/api/webhooks/" + fake(17, digitChars, 18) + "/" + fake(18, b64URLChars, 68), []string{"discord_webhook"}},
		{"telegram bot token", "curl https://api.telegram.org/bot" + fake(19, digitChars, 10) + ":AA" + fake(25, b64URLChars, 33) + "/getMe", []string{"telegram_bot_token"}},
		{"openai legacy key", "OPENAI_API_KEY=" + "sk-" + fake(26, alnumChars, 20) + "T3Blbk" + "FJ" + fake(27, alnumChars, 20), []string{"openai_api_key"}},
		{"openai project key", `client = OpenAI(api_key="` + openAIProj + `")`, []string{"openai_api_key"}},
		{"anthropic key", "ANTHROPIC_API_KEY=" + "sk-" + "ant-api03-" + fake(28, b64URLChars, 93) + "AA", []string{"anthropic_api_key"}},
		{"hugging face token", "login(token=\"" + "hf_" + fake(29, upperChars+lowerChars, 34) + "\")", []string{"huggingface_token"}},
		{"google ai key", "GOOGLE_API_KEY=" + "AIza" + fake(30, b64URLChars, 35), []string{"google_api_key"}},
		{"github classic pat", "git clone https://" + "ghp_" + fake(31, alnumChars, 36) + "@github.com/org/repo", []string{"github_token"}},
		{"github oauth token", "Authorization: token " + "gho_" + fake(32, alnumChars, 36), []string{"github_token"}},
		{"github server token", "GITHUB_TOKEN=" + "ghs_" + fake(33, alnumChars, 36), []string{"github_token"}},
		{"github fine-grained pat", "github_pat_" + fake(34, alnumChars, 22) + "_" + fake(35, alnumChars, 59), []string{"github_token"}},
		{"stripe live key", "stripe.api_key = '" + "sk_live_" + fake(36, alnumChars, 24) + "'", []string{"stripe_secret_key"}},
		{"stripe restricted key", "rk_live_" + fake(37, alnumChars, 99), []string{"stripe_secret_key"}},
		{"jwt", "Authorization: Bearer " + jwt, []string{"jwt"}},
		{"pem rsa private key", "my key:\n" + pemKey("RSA PRIVATE KEY", 200, 10, false), []string{"private_key"}},
		{"pem pkcs8 private key", pemKey("PRIVATE KEY", 300, 8, false), []string{"private_key"}},
		{"pem openssh private key", pemKey("OPENSSH PRIVATE KEY", 400, 6, false), []string{"private_key"}},
		{"pem ec private key", pemKey("EC PRIVATE KEY", 500, 3, false), []string{"private_key"}},
		// openssl genpkey -algorithm ed25519: a fixed ASN.1 prefix and 32
		// random bytes, 64 characters in all.
		{"pem ed25519 private key", "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI" + fake(700, b64Chars, 42) + "5\n-----END PRIVATE KEY-----", []string{"private_key"}},
		{"pem encrypted legacy key", pemKey("RSA PRIVATE KEY", 600, 10, false, "Proc-Type: 4,ENCRYPTED", "DEK-Info: AES-128-CBC,"+fake(601, "0123456789ABCDEF", 32)), []string{"private_key"}},
		{"several kinds", "use " + "ghp_" + fake(38, alnumChars, 36) + " and " + "xoxb-" + fake(39, digitChars, 12) + "-" + fake(40, digitChars, 13) + "-" + fake(41, alnumChars, 24), []string{"github_token", "slack_token"}},
	}
	neg := []corpusCase{
		{"rotate aws key question", "how do I rotate my AWS access key?", nil},
		{"openai prefix question", "what does sk- mean in OpenAI keys", nil},
		{"pem header prose", "BEGIN PRIVATE KEY is a PEM header", nil},
		{"pem header with placeholder body", "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----", nil},
		{"pem truncated example", "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA" + "...\n-----END RSA PRIVATE KEY-----", nil},
		{"pem certificate", pemKey("CERTIFICATE", 700, 10, false), nil},
		{"pem public key", pemKey("PUBLIC KEY", 800, 6, false), nil},
		{"aws documentation example", "AWS_ACCESS_KEY_ID=" + "AKIA" + "IOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY=" + "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY", nil},
		{"aws placeholder", "set aws_secret_access_key = <your-secret-key> and aws_access_key_id = AKIA...", nil},
		{"slack documentation webhook", "https://" + "hooks.slack.com/services/" + "T00000000/B00000000/" + strings.Repeat("X", 24), nil},
		{"slack token placeholder", "export SLACK_BOT_TOKEN=xoxb-your-bot-token-goes-here", nil},
		{"slack prefix prose", "Bot tokens start with xoxb- and user tokens with xoxp-.", nil},
		{"hugging face function", "Use hf_hub_download(repo_id=\"bert-base-uncased\", filename=\"config.json\") to fetch it.", nil},
		{"github prefix prose", "ghp_ tokens are classic personal access tokens; github_pat_ ones are fine-grained.", nil},
		{"stripe prefix prose", "Never commit sk_live_ keys; use sk_test_ keys in CI.", nil},
		{"google prefix prose", "Google API keys start with AIza followed by 35 characters.", nil},
		{"jwt explained", "A JWT has three parts, header.payload.signature; the header eyJhbGciOiJIUzI1NiJ9 decodes to {\"alg\":\"HS256\"}.", nil},
		{"git commit and aws", "commit " + fake(42, hexChars, 40) + " fixes aws secret rotation", nil},
		{"sha256 digest", "image digest sha256:" + fake(43, hexChars, 64), nil},
		{"uuids", "job ids: 3f2b8c1e-9a4d-4e7b-8c2f-1a2b3c4d5e6f, 7d9e0f1a-2b3c-4d5e-8f70-a1b2c3d4e5f6", nil},
		{"sklearn hyphenated", "the sk-learn-style-hyphenated-identifier-for-the-model-config is fine", nil},
		{"data url image", "data:image/png;base64," + fake(44, b64Chars, 4000), nil},
		{"go sum line", "cel.dev/cel-go v0.33.2 h1:" + fake(45, b64Chars, 43) + "=", nil},
		{"random base64 checksum", "checksum: " + fake(46, b64Chars, 40), nil},
		{"long url", "see https://github.com/cortex-os/core/blob/main/internal/safety/policy/secrets.go#L120 and https://docs.aws.amazon.com/IAM/latest/UserGuide/id_credentials_access-keys.html", nil},
		{"java dotted name", "MainApplicationControllr.getUsr.processIncomingRequestHandlerX1", nil},
		{"telegram low entropy", "12345678:AA" + strings.Repeat("b", 33), nil},
		{"azure placeholder", "DefaultEndpointsProtocol=https;AccountName=demo;AccountKey=<your-account-key>;EndpointSuffix=core.windows.net", nil},
		{"kubernetes manifest", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: changeme\n", nil},
		{"python env lookup", "api_key = os.environ[\"OPENAI_API_KEY\"]  # never hard-code sk-... keys", nil},
		{"openai key with lowercase hex", "sk-" + fake(47, hexChars, 48), nil},
		{"unicode prose", "Größe und Gewicht: 12 kg — bitte prüfen, ob der Schlüssel rotiert wurde.", nil},
	}
	return append(pos, neg...)
}

// typicalPrompt returns about n bytes of ordinary prompt text (prose, a
// little code and a URL), without credentials.
func typicalPrompt(n int) string {
	const para = "Summarise the following incident report for the on-call channel. " +
		"At 14:02 UTC the scheduler stopped dispatching jobs on job.chat.completion; " +
		"the safety kernel answered within 3 ms but the worker pool `gpu-a` reported no heartbeats. " +
		"See https://status.example.org/incidents/2026-11-22 for the timeline.\n" +
		"```go\nfor _, w := range pool.Workers() {\n\tif time.Since(w.LastSeen) > 30*time.Second {\n\t\tpool.Evict(w.ID)\n\t}\n}\n```\n" +
		"Please list the likely causes, what we should check first, and keep it under 200 words.\n"
	var b strings.Builder
	for b.Len() < n {
		b.WriteString(para)
	}
	return b.String()[:n]
}
