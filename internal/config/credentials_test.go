package config

import (
	"strings"
	"testing"
)

// TestCredentialsInURLsRefused: check-config (Parse validates) refuses a
// credential in any URL the file holds, names the parameter (never its
// value), and says where the secret goes instead.
func TestCredentialsInURLsRefused(t *testing.T) {
	kp := func(base, token string) func(string) string {
		return rep("provider: local\n  local: {root_key_file: /k/root.json}",
			"provider: keyprotect\n  keyprotect: {base_url: '"+base+"', token_url: '"+token+"', instance_id: i, root_key_id: r, api_key_file: /f}")
	}
	httpSink := func(u string) func(string) string {
		return add("  - {name: web, type: http, url: '"+u+"'}", "sinks")
	}
	const secret = "s3cr3tvalue"
	cases := []struct {
		name string
		edit func(string) string
		want []string
	}{
		{"http sink token", httpSink("https://h/v1?token=" + secret), []string{`sinks[1].url: must not carry credentials (query parameter "token"`, "auth_header_file"}},
		{"http sink TOKEN upper case", httpSink("https://h/v1?a=1&TOKEN=" + secret), []string{`query parameter "TOKEN"`}},
		{"http sink key", httpSink("https://h/v1?key=" + secret), []string{`query parameter "key"`}},
		{"http sink secret", httpSink("https://h/v1?secret=" + secret), []string{`query parameter "secret"`}},
		{"http sink sig", httpSink("https://h/v1?sv=2024&sig=" + secret), []string{`query parameter "sig"`}},
		{"http sink signature", httpSink("https://h/v1?Signature=" + secret), []string{`query parameter "Signature"`}},
		{"http sink password", httpSink("https://h/v1?password=" + secret), []string{`query parameter "password"`}},
		{"http sink passwd", httpSink("https://h/v1?passwd=" + secret), []string{`query parameter "passwd"`}},
		{"http sink apikey", httpSink("https://h/v1?apikey=" + secret), []string{`query parameter "apikey"`}},
		{"http sink api_key", httpSink("https://h/v1?api_key=" + secret), []string{`query parameter "api_key"`}},
		{"http sink access_token", httpSink("https://h/v1?access_token=" + secret), []string{`query parameter "access_token"`}},
		{"http sink auth", httpSink("https://h/v1?auth=" + secret), []string{`query parameter "auth"`}},
		{"http sink authorization", httpSink("https://h/v1?Authorization=" + secret), []string{`query parameter "Authorization"`}},
		{"http sink x-api-key", httpSink("https://h/v1?x-api-key=" + secret), []string{`query parameter "x-api-key"`}},
		{"http sink userinfo password", httpSink("https://user:" + secret + "@h/v1"), []string{"sinks[1].url: must not carry credentials (a password in its userinfo", "auth_header_file"}},
		{"http sink userinfo name", httpSink("https://" + secret + "@h/v1"), []string{"sinks[1].url: must not carry credentials (userinfo"}},
		{"keyprotect base_url", kp("https://kp.example/?apikey="+secret, "https://iam.example/token"),
			[]string{`kms.keyprotect.base_url: must not carry credentials (query parameter "apikey"`, "api_key_file", "api_key_env"}},
		{"keyprotect token_url", kp("https://kp.example", "https://u:"+secret+"@iam.example/token"),
			[]string{"kms.keyprotect.token_url: must not carry credentials (a password in its userinfo", "api_key_file"}},
		{"mqtt broker query", rep("ssl://127.0.0.1:8883", "'ssl://127.0.0.1:8883?token="+secret+"'"), []string{"mqtt.brokers[0]: want scheme://host:port with no path or query"}},
		{"postgres sink password", add("  - {name: two, type: postgres, dsn: 'host=db password="+secret+"'}", "sinks"), []string{"sinks[1].dsn: holds a password"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.edit(base)), noEnv)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error repeats the secret:\n%v", err)
			}
		})
	}

	// What is not a credential passes.
	for _, u := range []string{"https://h/v1", "https://h/v1?format=ndjson&api-version=2024-01-01"} {
		if _, err := Parse([]byte(httpSink(u)(base)), noEnv); err != nil {
			t.Errorf("%s refused: %v", u, err)
		}
	}
}
