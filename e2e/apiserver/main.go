// dk-apiserver: a real Kubernetes API server for DiffKeeper's end-to-end tests, assembled from
// the upstream Kubernetes libraries that Debian packages (k8s.io/apiserver,
// k8s.io/apiextensions-apiserver, k8s.io/api, client-go), because no kube-apiserver binary can
// be had here.
//
// One generic API server (the apiextensions-apiserver's: CRDs and custom resources with the real
// schema/CEL validation, defaulting, pruning, printer columns, status and scale subresources) on
// which we also install the built-in groups the project uses, stored through the generic
// registry (registry.go, resources.go). Authentication is a static token file plus
// serviceaccount tokens (auth.go), authorization is RBAC over the stored roles (rbac.go), and
// admission is kube's NamespaceLifecycle plugin (objects need an existing namespace). Everything
// persists in etcd. See README.md for what is not there (controllers, kubelet, defaulting).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	noopoteltrace "go.opentelemetry.io/otel/trace/noop"

	v1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1beta1"
	apiextensionsapiserver "k8s.io/apiextensions-apiserver/pkg/apiserver"
	crdoptions "k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	apiextensionsopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericfilters "k8s.io/apiserver/pkg/server/filters"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	utilopenapi "k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/apiserver/pkg/util/proxy"
	"k8s.io/apiserver/pkg/util/webhook"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/klog/v2"
	openapicommon "k8s.io/kube-openapi/pkg/common"
	netutils "k8s.io/utils/net"

	builtinopenapi "diffkeeper.dev/e2e-apiserver/openapi"
)

func main() {
	var (
		etcdServers = flag.String("etcd-servers", "http://127.0.0.1:2379", "comma-separated etcd client URLs")
		bind        = flag.String("bind-address", "127.0.0.1", "address to serve on")
		port        = flag.Int("secure-port", 6443, "HTTPS port")
		certFile    = flag.String("tls-cert-file", "", "serving certificate (PEM)")
		keyFile     = flag.String("tls-private-key-file", "", "serving key (PEM)")
		tokenFile   = flag.String("token-auth-file", "", "static tokens: token,user,uid,\"group1,group2\"")
	)
	klog.InitFlags(nil)
	flag.Parse()
	if *certFile == "" || *keyFile == "" || *tokenFile == "" {
		fmt.Fprintln(os.Stderr, "dk-apiserver: --tls-cert-file, --tls-private-key-file and --token-auth-file are required")
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if err := run(ctx, strings.Split(*etcdServers, ","), *bind, *port, *certFile, *keyFile, *tokenFile); err != nil {
		klog.ErrorS(err, "dk-apiserver failed")
		os.Exit(1)
	}
}

func run(ctx context.Context, etcdServers []string, bind string, port int, certFile, keyFile, tokenFile string) error {
	// Options as apiextensions-apiserver's own command sets them up, minus what needs a separate
	// core API server (delegated authn/authz, CoreAPI kubeconfig, webhook admission, priority
	// and fairness): we provide those ourselves below.
	o := genericoptions.NewRecommendedOptions("/registry",
		apiextensionsapiserver.Codecs.LegacyCodec(v1beta1.SchemeGroupVersion, v1.SchemeGroupVersion))
	o.Etcd.StorageConfig.Transport.ServerList = etcdServers
	o.SecureServing.BindAddress = netutils.ParseIPSloppy(bind)
	o.SecureServing.BindPort = port
	o.SecureServing.ServerCert.CertKey = genericoptions.CertKey{CertFile: certFile, KeyFile: keyFile}
	o.Authentication = nil
	o.Authorization = nil
	o.CoreAPI = nil
	o.Admission = nil
	o.Features.EnablePriorityAndFairness = false
	if errs := o.Validate(); len(errs) > 0 {
		return fmt.Errorf("options: %v", errs)
	}

	runOptions := genericoptions.NewServerRunOptions()
	if err := runOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	serverConfig := genericapiserver.NewRecommendedConfig(apiextensionsapiserver.Codecs)
	if err := runOptions.ApplyTo(&serverConfig.Config); err != nil {
		return err
	}
	if err := o.ApplyTo(serverConfig); err != nil {
		return err
	}
	serverConfig.ExternalAddress = net.JoinHostPort(bind, strconv.Itoa(port))
	// kube-apiserver's list: a port-forward (or exec, attach, log) stream is not cut at the
	// request timeout, and only a request outside the timeout filter can be hijacked.
	serverConfig.LongRunningFunc = genericfilters.BasicLongRunningRequestCheck(
		sets.NewString("watch", "proxy"),
		sets.NewString("attach", "exec", "proxy", "log", "portforward"),
	)
	serverConfig.MergedResourceConfig = apiextensionsapiserver.DefaultAPIResourceConfigSource()

	// Informers over this very server, through its loopback client (kube-apiserver does the
	// same): RBAC reads roles and bindings from them, NamespaceLifecycle reads namespaces.
	// The generic server starts them after it starts serving.
	loopback := serverConfig.LoopbackClientConfig
	client, err := kubernetes.NewForConfig(loopback)
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	serverConfig.SharedInformerFactory = factory
	rbacInformers := factory.Rbac().V1()
	rbac := &rbacAuthorizer{
		roles:               rbacInformers.Roles().Lister(),
		roleBindings:        rbacInformers.RoleBindings().Lister(),
		clusterRoles:        rbacInformers.ClusterRoles().Lister(),
		clusterRoleBindings: rbacInformers.ClusterRoleBindings().Lister(),
	}
	auth, err := newAuthState(tokenFile, rbac)
	if err != nil {
		return err
	}
	serverConfig.Authentication.Authenticator = auth.all
	serverConfig.Authentication.APIAudiences = apiAudiences
	serverConfig.Authorization.Authorizer = auth.authz

	nsLifecycle, err := lifecycle.NewLifecycle(sets.New(metav1.NamespaceDefault, metav1.NamespaceSystem, metav1.NamespacePublic))
	if err != nil {
		return err
	}
	nsLifecycle.SetExternalKubeInformerFactory(factory)
	nsLifecycle.SetExternalKubeClientSet(client)
	if err := nsLifecycle.ValidateInitialization(); err != nil {
		return err
	}
	serverConfig.AdmissionControl = admission.NewChainHandler(nsLifecycle)

	// OpenAPI v2 and v3 for the built-in kinds (generated at build time from k8s.io/api by
	// kube-openapi's openapi-gen) and for apiextensions' own kinds. Server-side apply of
	// built-in kinds and kubectl's validation both read these; CRDs add theirs at run time.
	defs := utilopenapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(func(ref openapicommon.ReferenceCallback) map[string]openapicommon.OpenAPIDefinition {
		m := apiextensionsopenapi.GetOpenAPIDefinitions(ref)
		for k, v := range builtinopenapi.GetOpenAPIDefinitions(ref) {
			m[k] = v
		}
		return m
	})
	namer := openapinamer.NewDefinitionNamer(apiextensionsapiserver.Scheme, clientgoscheme.Scheme)
	serverConfig.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(defs, namer)
	serverConfig.OpenAPIConfig.Info.Title = "Kubernetes"
	serverConfig.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(defs, namer)
	serverConfig.OpenAPIV3Config.Info.Title = "Kubernetes"

	// Legacy /apis must list CRD groups too (the kube-aggregator does that in a real cluster).
	serverConfig.BuildHandlerChainFunc = func(apiHandler http.Handler, c *genericapiserver.Config) http.Handler {
		return genericapiserver.DefaultBuildHandlerChain(withCRDGroupsInLegacyDiscovery(apiHandler), c)
	}

	config := &apiextensionsapiserver.Config{
		GenericConfig: serverConfig,
		ExtraConfig: apiextensionsapiserver.ExtraConfig{
			CRDRESTOptionsGetter: crdoptions.NewCRDRESTOptionsGetter(*o.Etcd, serverConfig.ResourceTransformers, serverConfig.StorageObjectCountTracker),
			ServiceResolver:      &serviceResolver{factory.Core().V1().Services().Lister()},
			AuthResolverWrapper:  webhook.NewDefaultAuthenticationInfoResolverWrapper(nil, nil, loopback, noopoteltrace.NewTracerProvider()),
		},
	}
	completed := config.Complete()
	// apiextensions-apiserver turns discovery off, expecting to sit behind kube-apiserver and the
	// aggregator; standing alone, it must serve /apis (and aggregated discovery) itself.
	completed.GenericConfig.EnableDiscovery = true
	server, err := completed.New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}
	s := server.GenericAPIServer
	// Tests stop and start servers often: do not wait up to a minute (the request timeout) for
	// open watch connections to go away on shutdown. Writes are synchronous to etcd.
	s.ShutdownTimeout = time.Second
	lister := server.Informers.Apiextensions().V1().CustomResourceDefinitions().Lister()
	crdLister.Store(&lister)
	if err := installBuiltins(s, o.Etcd, auth); err != nil {
		return err
	}

	// Readiness waits for the RBAC and namespace caches (else early requests are wrongly
	// denied) and for the bootstrap objects.
	s.AddPostStartHookOrDie("dk-informers-synced", func(hc genericapiserver.PostStartHookContext) error {
		synced := []func() bool{
			rbacInformers.Roles().Informer().HasSynced, rbacInformers.RoleBindings().Informer().HasSynced,
			rbacInformers.ClusterRoles().Informer().HasSynced, rbacInformers.ClusterRoleBindings().Informer().HasSynced,
			factory.Core().V1().Namespaces().Informer().HasSynced,
		}
		return wait.PollUntilContextCancel(hc.Context, 50*time.Millisecond, true, func(context.Context) (bool, error) {
			for _, f := range synced {
				if !f() {
					return false, nil
				}
			}
			return true, nil
		})
	})
	dyn, err := dynamic.NewForConfig(loopback)
	if err != nil {
		return err
	}
	s.AddPostStartHookOrDie("dk-namespace-controller", func(hc genericapiserver.PostStartHookContext) error {
		runNamespaceController(hc.Context, client, dyn, factory, lister)
		return nil
	})
	s.AddPostStartHookOrDie("dk-bootstrap", func(hc genericapiserver.PostStartHookContext) error {
		return wait.PollUntilContextCancel(hc.Context, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			if err := bootstrap(ctx, client); err != nil {
				klog.InfoS("bootstrap not done yet", "err", err)
				return false, nil
			}
			return true, nil
		})
	})
	return s.PrepareRun().RunWithContext(ctx)
}

// serviceResolver resolves conversion-webhook services (as apiextensions-apiserver does).
type serviceResolver struct{ services corelisters.ServiceLister }

func (r *serviceResolver) ResolveEndpoint(namespace, name string, port int32) (*url.URL, error) {
	return proxy.ResolveCluster(r.services, namespace, name, port)
}
