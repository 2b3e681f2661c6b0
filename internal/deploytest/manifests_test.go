package deploytest

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/membudget"
)

const kubeDir = "../../deploy/kubernetes"

// kustomizations are every base and overlay that ships.
var kustomizations = []string{"base", "overlays/dev", "overlays/production"}

// object is one built manifest, decoded.
type object struct {
	kind, name string
	obj        runtime.Object
}

// build runs kustomize (its Go API, as `kustomize build` does) on one
// kustomization and decodes every object strictly into its Go type: an
// unknown field, a duplicate field or a kind without a registered type
// fails.
func build(t *testing.T, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(kubeDir, dir))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme, monitoringv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	dec := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
	var out []object
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		obj, gvk, err := dec.Decode(y, nil, nil)
		if err != nil {
			t.Errorf("%s: %s %s: strict decode: %v", dir, r.GetKind(), r.GetName(), err)
			continue
		}
		out = append(out, object{kind: gvk.Kind, name: r.GetName(), obj: obj})
	}
	if len(out) == 0 {
		t.Fatalf("%s: no objects", dir)
	}
	return out
}

func find[T runtime.Object](objs []object, kind, name string) (T, bool) {
	var zero T
	for _, o := range objs {
		if o.kind == kind && (name == "" || o.name == name || strings.HasPrefix(o.name, name+"-")) {
			v, ok := o.obj.(T)
			return v, ok
		}
	}
	return zero, false
}

// TestManifestsDecodeStrictly: every object of the base and of each
// overlay decodes strictly, and the ones decryptd needs are there.
func TestManifestsDecodeStrictly(t *testing.T) {
	want := map[string][]string{
		"base":                {"ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor", "StatefulSet"},
		"overlays/production": {"ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor", "StatefulSet"},
		"overlays/dev":        {"ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount", "StatefulSet"},
	}
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			objs := build(t, dir)
			kinds := map[string]bool{}
			for _, o := range objs {
				kinds[o.kind] = true
			}
			for _, k := range want[dir] {
				if !kinds[k] {
					t.Errorf("no %s", k)
				}
			}
			var got []string
			for k := range kinds {
				got = append(got, k)
			}
			sort.Strings(got)
			t.Logf("%d objects, kinds %v", len(objs), got)
		})
	}
}

// TestPodSecurity: the pod that decryptd runs in starts with a numeric
// user the kubelet can check against runAsNonRoot, group 65532 reads the
// Secrets (0440) and writes the data volume, and the kubelet never again
// makes the audit log group-writable (OnRootMismatch).
func TestPodSecurity(t *testing.T) {
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			sts := decryptdStatefulSet(t, build(t, dir))
			ps := sts.Spec.Template.Spec
			sc := ps.SecurityContext
			if sc == nil {
				t.Fatal("no pod securityContext")
			}
			for name, v := range map[string]*int64{"runAsUser": sc.RunAsUser, "runAsGroup": sc.RunAsGroup, "fsGroup": sc.FSGroup} {
				if v == nil || *v != 65532 {
					t.Errorf("%s = %v, want 65532", name, v)
				}
			}
			if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
				t.Error("runAsNonRoot is not true")
			}
			if sc.FSGroupChangePolicy == nil || *sc.FSGroupChangePolicy != corev1.FSGroupChangeOnRootMismatch {
				t.Errorf("fsGroupChangePolicy %v, want OnRootMismatch", sc.FSGroupChangePolicy)
			}
			if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
				t.Error("the pod mounts a service-account token")
			}
			c := decryptdContainer(t, sts)
			if c.StartupProbe == nil || c.LivenessProbe == nil || c.ReadinessProbe == nil {
				t.Error("startup, liveness and readiness probes are all required")
			}
			csc := c.SecurityContext
			if csc == nil || csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
				csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem || csc.Capabilities == nil || len(csc.Capabilities.Drop) == 0 {
				t.Errorf("container securityContext %+v: want no privilege escalation, read-only root, capabilities dropped", csc)
			}
			for _, v := range ps.Volumes {
				if v.Secret == nil {
					continue
				}
				if m := v.Secret.DefaultMode; m == nil || *m&0o7 != 0 || *m&0o040 == 0 || *m&0o022 != 0 {
					t.Errorf("secret volume %s: defaultMode %o, want group-readable, nothing for others, not writable (0440)", v.Name, derefMode(m))
				}
			}
			var hostSpread bool
			for _, tsc := range ps.TopologySpreadConstraints {
				if tsc.TopologyKey == "kubernetes.io/hostname" && tsc.WhenUnsatisfiable == corev1.DoNotSchedule {
					hostSpread = true
				}
			}
			if !hostSpread {
				t.Error("no topology spread over nodes (kubernetes.io/hostname, DoNotSchedule)")
			}
			volumes := map[string]bool{}
			for _, v := range ps.Volumes {
				volumes[v.Name] = true
			}
			for _, tmpl := range sts.Spec.VolumeClaimTemplates {
				volumes[tmpl.Name] = true
			}
			mounted := map[string]bool{}
			for _, ic := range append(append([]corev1.Container{}, ps.InitContainers...), c) {
				for _, vm := range ic.VolumeMounts {
					if !volumes[vm.Name] {
						t.Errorf("container %s mounts %s, which is no volume of the pod", ic.Name, vm.Name)
					}
				}
			}
			for _, vm := range c.VolumeMounts {
				mounted[vm.MountPath] = !vm.ReadOnly
			}
			if !mounted["/var/lib/decryptd"] {
				t.Error("the data volume /var/lib/decryptd is not mounted writable")
			}
		})
	}
}

func derefMode(m *int32) int32 {
	if m == nil {
		return -1
	}
	return *m
}

func decryptdStatefulSet(t *testing.T, objs []object) *appsv1.StatefulSet {
	t.Helper()
	sts, ok := find[*appsv1.StatefulSet](objs, "StatefulSet", "decryptd")
	if !ok {
		t.Fatal("no StatefulSet decryptd")
	}
	return sts
}

func decryptdContainer(t *testing.T, sts *appsv1.StatefulSet) corev1.Container {
	t.Helper()
	for _, c := range sts.Spec.Template.Spec.Containers {
		if c.Name == "decryptd" {
			return c
		}
	}
	t.Fatal("no container decryptd")
	return corev1.Container{}
}

// TestServiceAccountNoToken: the service account mounts no token either.
func TestServiceAccountNoToken(t *testing.T) {
	for _, dir := range kustomizations {
		sa, ok := find[*corev1.ServiceAccount](build(t, dir), "ServiceAccount", "decryptd")
		if !ok {
			t.Fatalf("%s: no ServiceAccount decryptd", dir)
		}
		if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
			t.Errorf("%s: service account automounts its token", dir)
		}
	}
}

// pinned: a tag that is not "latest", or a digest.
var pinned = regexp.MustCompile(`^[^:@]+(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?$`)

// TestImagesPinned: every container image names a release tag or a digest.
func TestImagesPinned(t *testing.T) {
	for _, dir := range kustomizations {
		for _, o := range build(t, dir) {
			sts, ok := o.obj.(*appsv1.StatefulSet)
			if !ok {
				continue
			}
			ps := sts.Spec.Template.Spec
			for _, c := range append(append([]corev1.Container{}, ps.InitContainers...), ps.Containers...) {
				img := c.Image
				_, tag, hasTag := strings.Cut(img[strings.LastIndex(img, "/")+1:], ":")
				digest := strings.Contains(img, "@sha256:")
				if !pinned.MatchString(img) || (!digest && (!hasTag || tag == "latest")) || strings.Contains(img, ":latest") {
					t.Errorf("%s: %s/%s: image %q is not pinned (a release tag or a digest)", dir, sts.Name, c.Name, img)
				}
			}
		}
	}
}

// TestConfigRollout: the configuration is a generated ConfigMap whose name
// carries its content's hash, and the StatefulSet mounts it by that name,
// so a config change rolls the pods.
func TestConfigRollout(t *testing.T) {
	for _, dir := range kustomizations {
		objs := build(t, dir)
		cm, ok := find[*corev1.ConfigMap](objs, "ConfigMap", "decryptd")
		if !ok {
			t.Fatalf("%s: no ConfigMap decryptd-<hash>", dir)
		}
		if !regexp.MustCompile(`^decryptd-[a-z0-9]{10}$`).MatchString(cm.Name) {
			t.Errorf("%s: ConfigMap name %q carries no content hash", dir, cm.Name)
		}
		sts := decryptdStatefulSet(t, objs)
		var ref string
		for _, v := range sts.Spec.Template.Spec.Volumes {
			if v.ConfigMap != nil {
				ref = v.ConfigMap.Name
			}
		}
		if ref != cm.Name {
			t.Errorf("%s: the StatefulSet mounts ConfigMap %q, the generated one is %q", dir, ref, cm.Name)
		}
		// Every ConfigMap any workload mounts (the dev broker's too) is
		// generated, hashed and in the build.
		built := map[string]bool{}
		for _, o := range objs {
			if o.kind == "ConfigMap" {
				built[o.name] = true
			}
		}
		for _, o := range objs {
			s, ok := o.obj.(*appsv1.StatefulSet)
			if !ok {
				continue
			}
			for _, v := range s.Spec.Template.Spec.Volumes {
				if v.ConfigMap == nil {
					continue
				}
				if !built[v.ConfigMap.Name] || !regexp.MustCompile(`-[a-z0-9]{10}$`).MatchString(v.ConfigMap.Name) {
					t.Errorf("%s: %s mounts ConfigMap %q: not a generated (hashed) ConfigMap of the build", dir, s.Name, v.ConfigMap.Name)
				}
			}
		}
	}
}

// TestMemoryBudget: each kustomization's configuration is valid, and its
// pod's GOMEMLIMIT, memory request and limit are the ones MemoryBudget
// derives from it.
func TestMemoryBudget(t *testing.T) {
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			objs := build(t, dir)
			cfg := builtConfig(t, objs)
			c := decryptdContainer(t, decryptdStatefulSet(t, objs))
			var gml string
			for _, e := range c.Env {
				if e.Name == "GOMEMLIMIT" {
					gml = e.Value
				}
			}
			wantGML := fmt.Sprintf("%dMiB", GoMemLimitMiB(cfg))
			if gml != wantGML {
				t.Errorf("GOMEMLIMIT %q, want %q (budget %d B: %+v)", gml, wantGML, MemoryBudget(cfg), membudget.Of(cfg))
			}
			wantLimit := resource.NewQuantity(MemoryLimit(cfg), resource.BinarySI)
			lim, req := c.Resources.Limits[corev1.ResourceMemory], c.Resources.Requests[corev1.ResourceMemory]
			if lim.Cmp(*wantLimit) != 0 || req.Cmp(*wantLimit) != 0 {
				t.Errorf("memory request %s, limit %s; want both %s (1.25 x budget, rounded up to 64 MiB)", req.String(), lim.String(), wantLimit.String())
			}
			if _, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
				t.Error("a CPU limit: Go would derive GOMAXPROCS from it (see the StatefulSet's comment)")
			}
			t.Logf("budget %.1f MiB (%s), GOMEMLIMIT %s, limit %s", float64(MemoryBudget(cfg))/(1<<20), mib(membudget.Of(cfg)), gml, lim.String())
		})
	}
}

// mib writes the budget's terms in MiB, as deploy/README.md does.
func mib(t membudget.Terms) string {
	f := func(b int64) float64 { return float64(b) / (1 << 20) }
	return fmt.Sprintf("base %.1f + in flight %.1f + reading %.1f + batches %.1f + cache %.1f + replay %.1f MiB",
		f(t.Base), f(t.InFlight), f(t.Reading), f(t.Batches), f(t.Cache), f(t.Replay))
}

// builtConfig parses the built ConfigMap's config.yaml as the daemon would
// (with the environment the pod gives it) and validates it.
func builtConfig(t *testing.T, objs []object) *config.Config {
	t.Helper()
	cm, ok := find[*corev1.ConfigMap](objs, "ConfigMap", "decryptd")
	if !ok {
		t.Fatal("no ConfigMap decryptd")
	}
	env := map[string]string{
		"DECRYPTD_MQTT_CLIENT_ID": "decryptd-0",
		"DECRYPTD_REGISTRY_DSN":   "postgres://decryptd@postgres:5432/decryptd",
	}
	cfg, err := config.Parse([]byte(cm.Data["config.yaml"]), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatalf("config.yaml of ConfigMap %s: %v", cm.Name, err)
	}
	return cfg
}

// TestDisruptionAndNetwork: a PodDisruptionBudget lets a drain evict one
// replica at a time, and the NetworkPolicy confines both directions with
// ingress only to the metrics port.
func TestDisruptionAndNetwork(t *testing.T) {
	for _, dir := range kustomizations {
		objs := build(t, dir)
		pdb, ok := find[*policyv1.PodDisruptionBudget](objs, "PodDisruptionBudget", "decryptd")
		if !ok || pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
			t.Errorf("%s: want a PodDisruptionBudget with maxUnavailable 1, got %+v", dir, pdb)
		}
		np, ok := find[*networkingv1.NetworkPolicy](objs, "NetworkPolicy", "decryptd")
		if !ok {
			t.Fatalf("%s: no NetworkPolicy", dir)
		}
		types := fmt.Sprint(np.Spec.PolicyTypes)
		if !strings.Contains(types, "Ingress") || !strings.Contains(types, "Egress") {
			t.Errorf("%s: policyTypes %s, want both", dir, types)
		}
		for _, in := range np.Spec.Ingress {
			for _, p := range in.Ports {
				if p.Port == nil || p.Port.IntValue() != 9464 {
					t.Errorf("%s: ingress allowed on %v, want only the metrics port 9464", dir, p.Port)
				}
			}
		}
		ports := map[int]bool{}
		for _, e := range np.Spec.Egress {
			for _, p := range e.Ports {
				ports[p.Port.IntValue()] = true
			}
		}
		for _, p := range []int{53, 5432, 443} {
			if !ports[p] {
				t.Errorf("%s: no egress to port %d", dir, p)
			}
		}
		if !ports[8883] && !ports[1883] {
			t.Errorf("%s: no egress to the MQTT broker", dir)
		}
	}
}

// TestStrictDecodeRefuses: the strict decoding above is strict: a
// misspelt field in a manifest fails it.
func TestStrictDecodeRefuses(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := appsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	dec := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
	for name, y := range map[string]string{
		"unknown field":   "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: x}\nspec: {replica: 2}\n",
		"duplicate field": "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: x}\nspec: {replicas: 2, replicas: 3}\n",
		"unknown kind":    "apiVersion: apps/v1\nkind: StatefulSett\nmetadata: {name: x}\n",
	} {
		if _, _, err := dec.Decode([]byte(y), nil, nil); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

// TestWiring: the objects find each other: the Service, PDB,
// NetworkPolicy and the spread constraints select the pods, the
// ServiceMonitor selects the Service and scrapes a port it has, the probes
// use the container's metrics port, the pod's service account exists.
func TestWiring(t *testing.T) {
	matches := func(sel, lbls map[string]string) bool {
		if len(sel) == 0 {
			return false
		}
		for k, v := range sel {
			if lbls[k] != v {
				return false
			}
		}
		return true
	}
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			objs := build(t, dir)
			sts := decryptdStatefulSet(t, objs)
			pod := sts.Spec.Template.Labels
			if !matches(sts.Spec.Selector.MatchLabels, pod) {
				t.Error("the StatefulSet's selector does not select its pods")
			}
			svc, ok := find[*corev1.Service](objs, "Service", "decryptd")
			if !ok || !matches(svc.Spec.Selector, pod) || sts.Spec.ServiceName != svc.Name {
				t.Error("the Service does not govern and select the pods")
			}
			pdb, _ := find[*policyv1.PodDisruptionBudget](objs, "PodDisruptionBudget", "decryptd")
			if pdb == nil || !matches(pdb.Spec.Selector.MatchLabels, pod) {
				t.Error("the PodDisruptionBudget does not select the pods")
			}
			np, _ := find[*networkingv1.NetworkPolicy](objs, "NetworkPolicy", "decryptd")
			if np == nil || !matches(np.Spec.PodSelector.MatchLabels, pod) {
				t.Error("the NetworkPolicy does not select the pods")
			}
			for _, c := range sts.Spec.Template.Spec.TopologySpreadConstraints {
				if c.LabelSelector == nil || !matches(c.LabelSelector.MatchLabels, pod) {
					t.Errorf("spread over %s does not count the pods", c.TopologyKey)
				}
			}
			if _, ok := find[*corev1.ServiceAccount](objs, "ServiceAccount", sts.Spec.Template.Spec.ServiceAccountName); !ok {
				t.Errorf("no ServiceAccount %q", sts.Spec.Template.Spec.ServiceAccountName)
			}
			c := decryptdContainer(t, sts)
			var metricsPort bool
			for _, p := range c.Ports {
				metricsPort = metricsPort || (p.Name == "metrics" && p.ContainerPort == 9464)
			}
			if !metricsPort {
				t.Error("the container has no port metrics (9464)")
			}
			for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
				if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.String() != "metrics" {
					t.Errorf("%s probe does not use the metrics port", name)
				}
			}
			sm, ok := find[*monitoringv1.ServiceMonitor](objs, "ServiceMonitor", "decryptd")
			if !ok {
				if dir != "overlays/dev" {
					t.Error("no ServiceMonitor")
				}
				return
			}
			if !matches(sm.Spec.Selector.MatchLabels, svc.Labels) {
				t.Error("the ServiceMonitor does not select the Service")
			}
			for _, ep := range sm.Spec.Endpoints {
				var found bool
				for _, sp := range svc.Spec.Ports {
					found = found || sp.Name == ep.Port
				}
				if !found {
					t.Errorf("the ServiceMonitor scrapes port %q, which the Service lacks", ep.Port)
				}
			}
			if dir == "overlays/production" {
				pr, _ := find[*monitoringv1.PrometheusRule](objs, "PrometheusRule", "decryptd")
				if sm.Labels["release"] == "" || pr == nil || pr.Labels["release"] == "" {
					t.Error("production: the ServiceMonitor and PrometheusRule lack the release label Prometheus selects on")
				}
			}
		})
	}
}
