import { nbdUri } from './nbd-uri';

describe('nbdUri', () => {
  it('writes TCP endpoints as nbd:// or nbds://, with brackets around an IPv6 host', () => {
    expect(nbdUri({ host: '10.0.0.5', port: 10809 }, false, 'erp/app-01/root')).toBe('nbd://10.0.0.5:10809/erp/app-01/root');
    expect(nbdUri({ host: '10.0.0.5', port: 10810 }, true, 'pit/1')).toBe('nbds://10.0.0.5:10810/pit/1');
    expect(nbdUri({ host: '::1', port: 10809 }, false, 'a/b/c')).toBe('nbd://[::1]:10809/a/b/c');
  });

  it('writes Unix sockets as nbd+unix:/// or nbds+unix:/// with the path as the socket parameter, escaped where it must be', () => {
    expect(nbdUri({ socket: '/run/continuum/nbd.sock' }, false, 'erp/app-01/root')).toBe('nbd+unix:///erp/app-01/root?socket=/run/continuum/nbd.sock');
    expect(nbdUri({ socket: '/run/continuum/nbd.sock' }, true, 'pit/1')).toBe('nbds+unix:///pit/1?socket=/run/continuum/nbd.sock');
    expect(nbdUri({ socket: '/tmp/my dir/a&b=%.sock' }, false, 'x')).toBe('nbd+unix:///x?socket=/tmp/my%20dir/a%26b%3D%25.sock');
  });
});
